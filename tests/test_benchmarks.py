"""The latency benchmark's core stays working: a tiny model, one short round."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from helpers import load_benchmark


@pytest.fixture(scope="module")
def latency():
    return load_benchmark("latency")


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))


def quick_args(latency, *extra: str):
    return latency.parse_args(["--image-size", "16", "--rounds", "1", "--min-run-time", "0.01",
                               "--warmup", "1", "--idle-wait", "0", "--devices", "cpu",
                               "--threads", "1", *extra])


def test_row_reports_predicted_and_measured_speedup(latency):
    args = quick_args(latency, "--profile", "1")
    pair = latency.prune_and_count(tiny(), args)
    pruned_conv = pair["models"]["pruned"][3]
    assert (pruned_conv.in_channels, pruned_conv.out_channels) == (8, 8)
    row = latency.benchmark_pair("tiny", pair, args, "cpu", "fp32")
    assert row["macs_pruned"] < row["macs_dense"]
    assert row["predicted_speedup"] == pytest.approx(row["macs_dense"] / row["macs_pruned"])
    assert row["measured_speedup"] == pytest.approx(row["round_speedups"][0])
    assert row["measured_over_predicted"] == pytest.approx(
        row["measured_speedup"] / row["predicted_speedup"])
    assert len(row["round_speedups"]) == 1 and row["others_cores"] >= 0
    assert any("conv" in op for op in row["op_ms"]["dense"])
    json.dumps(row)  # --json must be able to save it
    table = "\n".join(latency.render([row], max_contention=1e9))
    assert "| tiny | cpu | fp32 | 1 | 1 |" in table and "CPU target" in table
    profile = latency.render_profile(row)
    assert profile[0].startswith("tiny on cpu") and any("conv" in line for line in profile[3:])


def test_bf16_channels_last_row(latency):
    args = quick_args(latency, "--channels-last")
    row = latency.benchmark_pair("tiny", latency.prune_and_count(tiny(), args), args, "cpu", "bf16")
    assert row["dtype"] == "bf16" and row["channels_last"] and row["measured_speedup"] > 0


def test_sparsity_zero_is_the_original(latency):
    args = quick_args(latency, "--sparsity", "0")
    model = tiny().eval()
    pair = latency.prune_and_count(model, args)
    assert pair["macs"]["pruned"] == pair["macs"]["dense"]
    x = pair["x"]
    with torch.no_grad():
        torch.testing.assert_close(pair["models"]["pruned"](x), model(x), rtol=0, atol=0)


def test_round_to_makes_kept_channels_a_multiple(latency):
    args = quick_args(latency, "--sparsity", "0.6", "--round-to", "4")
    pair = latency.prune_and_count(tiny(), args)
    assert pair["models"]["pruned"][0].out_channels % 4 == 0


@pytest.mark.parametrize("bad", [["--dtypes", "fp8"], ["--sparsity", "1"], ["--round-to", "0"],
                                 ["--devices", "tpu"]])
def test_bad_options_are_refused(latency, bad):
    with pytest.raises(SystemExit):
        latency.parse_args(bad)
