"""The prune-speed benchmark's pieces: its pruneconf call prunes, and its table sums runs up."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("prune_speed")


def test_the_pruneconf_call_prunes_the_model_in_place(bench):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(),
                          nn.Linear(4 * 16, 3)).eval()
    bench.prune_call("pruneconf", model, torch.randn(1, 3, 4, 4))()
    assert model[0].out_channels == 4 and model[2].in_channels == 4


def test_a_row_takes_medians_ratios_and_the_memory_bound(bench):
    def ok(seconds, peak):
        return {"status": "ok", "seconds": seconds, "peak_mib": peak, "model_mib": 100.0, "others_cores": 0.5,
                "load": 2.0}

    runs = {"forward": [ok(0.5, 20.0)], "pruneconf": [ok(2.0, 50.0), ok(1.0, 90.0), ok(3.0, 70.0)],
            "torch_pruning": [ok(4.0, 10.0), {"status": "timeout"}]}
    row = bench.row("m", {tool: bench.summarise(rs) for tool, rs in runs.items()})
    assert row["pruneconf_s"] == 2.0 and row["pruneconf_peak_mib"] == 70.0 and row["torch_pruning_s"] == "timeout"
    assert row["ratio_vs_tp"] is None and row["pruneconf_x_forward"] == 4.0
    assert row["memory_bound_mib"] == 20.0 + 0.5 * 120.0 and row["within_bound"]
    lines = bench.markdown([row], bench.parse_args(["--runs", "3"]))
    assert lines[2].startswith("| m | 0.50 | 2.00 | timeout |") and "memory bound exceeded by: none" in lines


def test_the_zoo_names_stand_for_every_torchvision_model_of_their_kind(bench):
    import torchvision
    names = bench.model_names("classification, resnet18,segmentation")
    assert names[:len(torchvision.models.list_models(module=torchvision.models))] == \
        torchvision.models.list_models(module=torchvision.models)
    assert "resnet18" in names and "fcn_resnet50" in names and "vit_b_16" in names and "" not in names


def test_the_table_names_the_models_over_five_forwards(bench):
    def ok(seconds):
        return {"status": "ok", "seconds": seconds, "peak_mib": 1.0, "model_mib": 1.0, "others_cores": 0.0, "load": 0.0}

    rows = [bench.row(name, {"forward": bench.summarise([ok(1.0)]), "pruneconf": bench.summarise([ok(s)])})
            for name, s in (("fast", 3.0), ("slow", 7.5))]
    rows.append(bench.row("broken", {"forward": bench.summarise([ok(1.0)]),
                                     "pruneconf": bench.summarise([{"status": "failed"}])}))
    lines = bench.markdown(rows, bench.parse_args(["--runs", "1"]))
    assert "pruneconf within 5x a forward on 1 of 2 models; over: slow 7.5x; not timed: broken" in lines
