"""`pruneconf sweep`, `sensitivity`, `report`, and `--set` / `--target-macs` on init and prune."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pruneconf import Pruner
from pruneconf.cli import main
from pruneconf.analysis.predict import CostModel
from pruneconf.recipe import load_document
from pruneconf.recipe.load import load_recipe

NET = '''
import os
import torch
import torch.nn as nn

def build(width=16):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 32, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))

def build_per_rank():
    """Rank r of a torchrun launch builds other weights (+r): every rank must explore rank 0's."""
    model = build()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(int(os.environ.get("RANK", "0")))
    return model

def closeness(model):
    """Deterministic metric, higher is better: minus the distance to the dense model's outputs."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        return -float((model(x) - build().eval()(x)).abs().mean())
'''
SHAPE = ["--input-shape", "2,3,8,8"]


@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    return str(path)


def assert_on_budget(applied_recipe, target):
    """The report's MACs are the cost model's for the applied counts (exact for conv and
    linear layers), and they land on ``target`` within half a channel step of the costliest
    group: both planners keep the closer side of the last step, which is at most that one."""
    namespace = {}
    exec(NET, namespace)
    costs = CostModel(Pruner(namespace["build"](), torch.randn(2, 3, 8, 8)).groups)
    kept = {center: len(a.kept) for center, a in load_recipe(applied_recipe).applied.items()}
    dense, macs = costs.macs({}), costs.macs(kept)
    step = max(macs - costs.macs({**kept, center: k - 1}) for center, k in kept.items())
    table = applied_recipe.with_name("budget.csv")
    assert main(["report", str(applied_recipe), "--trust-recipe-model", "--csv", str(table), "--force"]) == 0
    total = read_csv(table)[-1]
    assert (int(total["macs_before"]), int(total["macs_after"])) == (dense, macs)
    assert abs(macs - target * dense) <= step / 2, (macs / dense, target, step / dense)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_recipes_table_and_plot_with_falling_macs(tmp_path, net, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", f"{net}:build", *SHAPE, "--sparsity", "0.2:0.8:0.3", "-o", str(out), "--latency",
                 "--set", "round_to=2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["plot.png", "sparsity_0.20.yaml", "sparsity_0.50.yaml", "sparsity_0.80.yaml",
                     "table.csv", "table.md"]
    rows = read_csv(out / "table.csv")
    assert [r["sparsity"] for r in rows] == ["0.00", "0.20", "0.50", "0.80"]
    macs = [int(r["macs"]) for r in rows]
    assert all(a > b for a, b in zip(macs, macs[1:])) and all(float(r["latency_ms"]) > 0 for r in rows)
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert load_recipe(out / "sparsity_0.50.yaml").settings.round_to == 2
    assert "sparsity_0.50.yaml" in capsys.readouterr().out
    # outputs are not replaced without --force
    assert main(["sweep", f"{net}:build", *SHAPE, "--sparsity", "0.5", "-o", str(out)]) == 2
    assert main(["sweep", f"{net}:build", *SHAPE, "--sparsity", "0.5", "-o", str(out), "--force"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["--sparsity", "0.5:0.1:x"], "START:STOP:STEP"),
    (["--sparsity", "0.5,1.2"], "sparsities in (0, 1)"),
    (["--set", "default_sparsity=0.3"], "use --sparsity"),
    (["--set", "roundto=2"], "did you mean 'round_to'"),
])
def test_sweep_bad_input_is_one_line(tmp_path, net, capsys, argv, message):
    assert main(["sweep", f"{net}:build", *SHAPE, "-o", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_init_with_set_and_target_then_prune_prints_the_report(tmp_path, net, capsys):
    recipe = tmp_path / "r.yaml"
    assert main(["init", f"{net}:build", *SHAPE, "-o", str(recipe), "--set", "round_to=4",
                 "--set", "0.max_sparsity=0.5", "--target-macs", "0.5"]) == 0
    doc = load_document(recipe)
    assert doc["settings"]["target_macs"] == 0.5 and doc["groups"]["0"]["max_sparsity"] == 0.5
    out = tmp_path / "p.pt"
    assert main(["prune", str(recipe), "--model", f"{net}:build", "-o", str(out), "--set", "3=0"]) == 0
    text = capsys.readouterr().out
    assert "| group " in text and "total (model)" in text and "| 3 " in text
    applied = load_recipe(tmp_path / "p.yaml")
    assert applied.sparsity["3"] == 0 and "3" not in applied.applied
    assert torch.load(out, weights_only=True)["3.weight"].shape[0] == 24


def test_prune_to_a_mac_budget_and_report_it_as_csv(tmp_path, net, capsys):
    recipe = tmp_path / "r.yaml"
    assert main(["init", f"{net}:build", *SHAPE, "-o", str(recipe)]) == 0
    assert main(["prune", str(recipe), "--model", f"{net}:build", "-o", str(tmp_path / "p.pt"), "--target-macs", "0.4"]) == 0
    capsys.readouterr()
    table = tmp_path / "report.csv"
    assert main(["report", str(tmp_path / "p.yaml"), "--model", f"{net}:build", "--csv", str(table)]) == 0
    rows = read_csv(table)
    assert rows[-1]["group"] == "total"
    assert_on_budget(tmp_path / "p.yaml", 0.4)
    assert "requested" in capsys.readouterr().out
    assert main(["report", str(recipe), "--model", f"{net}:build", "--csv", str(table)]) == 2  # exists: needs --force


def test_sensitivity_csv_plot_and_budget_recipe(tmp_path, net):
    out = tmp_path / "sens"
    assert main(["sensitivity", f"{net}:build", *SHAPE, "--eval", f"{net}:closeness", "--sparsities", "0.25,0.5",
                 "--budget", "0.6", "-o", str(out)]) == 0
    rows = read_csv(out / "sensitivity.csv")
    assert rows[0]["group"] == "(dense)" and float(rows[0]["drop"]) == 0
    assert {r["group"] for r in rows[1:]} == {"0", "3", "5"} and len(rows) == 1 + 3 * 2
    assert all(float(r["drop"]) >= 0 for r in rows[1:])
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    recipe = load_recipe(out / "recipe.yaml")
    assert recipe.settings.target_macs == 0.6 and recipe.settings.default_sparsity == 0
    pruned = tmp_path / "p.pt"
    assert main(["prune", str(out / "recipe.yaml"), "--model", f"{net}:build", "-o", str(pruned)]) == 0
    assert_on_budget(pruned.with_suffix(".yaml"), 0.6)


def test_sensitivity_needs_a_callable_eval(tmp_path, net, capsys):
    assert main(["sensitivity", f"{net}:build", *SHAPE, "--eval", f"{net}:nothing", "-o", str(tmp_path)]) == 2
    assert "'--eval'" in capsys.readouterr().err


MYDATA = '''
import torch

def batches():
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(5)]

def not_batches():
    return torch.zeros(3)
'''


@pytest.fixture
def mydata(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(MYDATA)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "mydata"


def test_prune_with_activation_ranks_by_calibration_data_and_records_the_batch_count(tmp_path, net, mydata):
    recipe = tmp_path / "recipe.yaml"
    assert main(["init", f"{net}:build", *SHAPE, "-o", str(recipe), "--metric", "activation"]) == 0
    out = tmp_path / "pruned.pt"
    assert main(["prune", str(recipe), "--model", f"{net}:build", "--calibration", "mydata:batches", "-o", str(out)]) == 0
    applied = load_recipe(tmp_path / "pruned.yaml")
    assert applied.settings.metric == "activation" and applied.settings.calibration_batches == 5
    assert torch.load(out, weights_only=True)["0.weight"].shape[0] == 8
    assert "mydata" not in (tmp_path / "pruned.yaml").read_text()  # the data is never named in a recipe
    # the same data keeps the same channels; under a MAC budget too
    again = tmp_path / "again.pt"
    assert main(["prune", str(recipe), "--model", f"{net}:build", "--calibration", "mydata:batches", "-o", str(again), "--target-macs", "0.5"]) == 0
    assert load_recipe(tmp_path / "again.yaml").settings.calibration_batches == 5


def test_data_metric_without_or_with_bad_calibration_is_one_line(tmp_path, net, mydata, capsys):
    recipe = tmp_path / "recipe.yaml"
    assert main(["init", f"{net}:build", *SHAPE, "-o", str(recipe), "--metric", "taylor"]) == 0
    capsys.readouterr()
    assert main(["prune", str(recipe), "--model", f"{net}:build", "-o", str(tmp_path / "p.pt")]) == 2
    err = capsys.readouterr().err
    assert "'settings.metric'" in err and "--calibration" in err and err.count("\n") == 1
    assert main(["prune", str(recipe), "--model", f"{net}:build", "--calibration", "mydata:not_batches", "-o", str(tmp_path / "p.pt")]) == 2
    assert "expected an iterable of batches" in capsys.readouterr().err


def test_sweep_and_sensitivity_rank_by_taylor_with_calibration(tmp_path, net, mydata):
    out = tmp_path / "sweep"
    assert main(["sweep", f"{net}:build", *SHAPE, "--sparsity", "0.25,0.5", "--metric", "taylor",
                 "--calibration", "mydata:batches", "-o", str(out)]) == 0
    assert load_recipe(out / "sparsity_0.50.yaml").settings.calibration_batches == 5
    sens = tmp_path / "sens"
    assert main(["sensitivity", f"{net}:build", *SHAPE, "--eval", f"{net}:closeness", "--sparsities", "0.5",
                 "--metric", "activation", "--calibration", "mydata:batches",
                 "--budget", "0.6", "-o", str(sens)]) == 0
    assert load_recipe(sens / "recipe.yaml").settings.calibration_batches == 5


def _torchrun_cli(*argv):
    """``torchrun --nproc_per_node 2 -m pruneconf ARGV`` on the CPU (gloo), one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "pruneconf", *argv], capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture
def one_thread():
    """The one-process reference computes on one thread, as each torchrun rank does: the
    same float results need the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sensitivity_under_torchrun_writes_what_one_process_writes(tmp_path, net, one_thread):
    argv = ["sensitivity", f"{net}:build_per_rank", *SHAPE, "--eval", f"{net}:closeness",
            "--sparsities", "0.25,0.5,0.75", "--budget", "0.6"]
    assert main([*argv, "-o", str(tmp_path / "one")]) == 0
    run = _torchrun_cli(*argv, "-o", str(tmp_path / "two"))
    assert "rank 0: 5 of the 9 (group, sparsity) points" in run.stderr
    assert "rank 1: 4 of the 9 (group, sparsity) points" in run.stderr
    for name in ("sensitivity.csv", "recipe.yaml"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    assert len(read_csv(tmp_path / "two" / "sensitivity.csv")) == 1 + 3 * 3


@pytest.mark.slow
def test_sweep_under_torchrun_writes_what_one_process_writes(tmp_path, net, one_thread):
    argv = ["sweep", f"{net}:build", *SHAPE, "--sparsity", "0.2:0.8:0.2"]
    assert main([*argv, "-o", str(tmp_path / "one")]) == 0
    run = _torchrun_cli(*argv, "-o", str(tmp_path / "two"))
    assert "rank 1: 2 of the 4 sparsities" in run.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir()) and len(names) == 4 + 3
    for name in names:
        if name != "plot.png":
            assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text(), name
