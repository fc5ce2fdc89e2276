"""The data-metrics benchmark stays working, at CI size (a tiny LM, a few digits epochs).

At this size the metrics' ordering is not robust across seeds (see README, "Ranking by
data"), so only what holds for every metric is asserted: pruning costs quality one-shot,
finetuning with masks wins some of it back, and every row is a real measurement.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "data_metrics.py"


def load():
    spec = importlib.util.spec_from_file_location("data_metrics_benchmark", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_rows_table_and_plot(tmp_path):
    bench = load()
    settings = dataclasses.replace(bench.quick(), text_bytes=40_000, train_steps=40, finetune_steps=10, eval_windows=16,
                                   digits_epochs=4)
    rows = bench.run(settings)
    by = {(r.task, r.metric, r.sparsity): r for r in rows}
    assert {m for t, m, _ in by if t == "lm-mlp"} == {"dense", *bench.METRICS}
    # removing heads always costs perplexity; removing a quarter of the MLP may not, at this size
    for task, worse in (("lm-all", lambda a, b: a > b), ("digits", lambda a, b: a < b)):
        dense = by[task, "dense", 0.0].oneshot
        for r in (r for r in rows if r.task == task and r.metric != "dense"):
            assert math.isfinite(r.oneshot) and math.isfinite(r.finetuned)
            assert worse(r.oneshot, dense) or r.oneshot == dense, r
    lm = [r for r in rows if r.task == "lm-all" and r.metric != "dense"]
    assert all(r.finetuned < r.oneshot for r in lm), lm   # finetuning with masks recovers perplexity
    bench.plot(rows, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "| activation |" in bench.table(rows, "digits", "accuracy", "{:.2f}%")
