"""Benchmark: does planning on a measured latency table buy the speed it promises?

One command per machine (``--models`` picks a subset)::

    OMP_NUM_THREADS=1 python benchmarks/latency_aware.py --threads 1 -o latency_aware.json

Per torchvision model (``weights=None``, 224x224, eval mode) and per batch (``--batches``,
default 1 and 8), through the CLI users run:

1. ``pruneconf latency MODEL --input-shape B,3,224,224 --threads T [--channels-last]`` (the
   layout is chosen per model and batch: channels_last where the dense model runs faster in
   it); one table per batch, since the table is keyed by batch; cached in ``--tables`` so a
   rerun measures nothing twice;
2. three recipes with ``pruneconf init --input-shape B,3,224,224``: ``--target-latency 0.5
   --latency-table`` (plan A; the closed loop measures and corrects it on this machine, at
   this batch, ``--refine`` corrections at most), ``--target-macs 0.5`` (the uniform MAC
   plan) and ``--target-macs 0.5 --latency-table`` (the latency-aware plan at the same MACs;
   the tool times it against the uniform plan and keeps the faster: the row says which);
   both tool runs time whole models the way step 4 does (``--latency-run-time`` is
   ``--min-run-time``; the loop's rounds are ``--rounds``' default);
3. each recipe prunes a copy with ``Pruner.apply_masks()``, which verifies masked == applied;
4. dense and pruned copies are timed alternately (``--rounds``, medians of
   ``torch.utils.benchmark`` blocks and of the per-round ratios; ``--statistic min`` takes
   minima instead, which resist busy neighbours) with the table's threads and layout.

Must show: (a) plan A's measured latency / dense within +-10 % of 0.5 (batch 1; the median of the
per-round ratios, as the closed loop measures it: on a shared machine the minima of dense and
pruned come from different rounds, i.e. different loads; (b) and (c) use that median too); (b) at 0.5 of
the MACs, latency-aware at least as fast as uniform on every model and >= 1.2x on two (batch
1); (c) measured speedup >= 0.9 x MAC-predicted speedup at batch 8, for plan A and for the
latency-aware plan at 0.5 of the MACs, both planned on the batch-8 table. The machine's load
average and the CPU time other processes took during the timings are recorded with every row.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analysis_speed import others_cpu_s  # noqa: E402  (the sibling benchmark)

import pruneconf  # noqa: E402
from pruneconf.analysis import total_macs  # noqa: E402
from pruneconf.cli import main as cli  # noqa: E402
from pruneconf.explore.latency_loop import ROUNDS, RUN_TIME  # noqa: E402
from pruneconf.explore.latency_measure import alternate, median_ratio as round_median, model_ms  # noqa: E402
from pruneconf.explore.latency_measure import place_inputs, place_model  # noqa: E402
from pruneconf.explore.latency_table import Setup, read_tables  # noqa: E402
from pruneconf.recipe.load import load_recipe  # noqa: E402

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "regnet_y_1_6gf"]
TARGET = 0.5
log = logging.getLogger("latency_aware")


def run_cli(argv: list[str]) -> None:
    code = cli(argv)
    if code != 0:
        raise SystemExit(f"pruneconf {' '.join(argv)} exited {code}")


def pick_layout(model: torch.nn.Module, batch: int, args: argparse.Namespace, table: Path) -> str:
    """channels_last where the dense model runs faster in it at ``batch``, else contiguous; the
    layout of a table measured before at this batch (a rerun reuses it instead of measuring another)."""
    if args.layout != "auto":
        return args.layout
    if table.exists():
        layouts = {entry["layout"] for entry in read_tables(table).values()
                   if entry.get("threads") == args.threads and entry.get("batch") == batch}
        if len(layouts) == 1:
            return layouts.pop()
    x = torch.randn(batch, 3, 224, 224)
    setups = {layout: Setup("cpu", "float32", batch, args.threads, layout)
              for layout in ("contiguous", "channels_last")}
    times = {layout: model_ms(place_model(model, s), place_inputs(x, s), s, 1.0, args.statistic)
             for layout, s in setups.items()}
    return min(times, key=times.get)


def pruned_copy(model: torch.nn.Module, x: torch.Tensor, recipe: str) -> tuple[torch.nn.Module, dict[str, int]]:
    """Traced in train mode, as `pruneconf init` traced it (stochastic depth adds ops there, and
    the recipe's fingerprint must match); ``apply_masks`` verifies masked == applied in eval mode.
    Also the kept channel counts per group (two recipes with the same counts are one model)."""
    pruned = copy.deepcopy(model).train()
    pruner = pruneconf.Pruner(pruned, x, load_recipe(recipe))
    counts = {center: len(kept) for center, kept in pruner.plan().kept.items()}
    pruner.apply_masks()  # raises unless masked == applied
    return pruned.eval(), counts


def time_pair(dense: torch.nn.Module, pruned: torch.nn.Module, batch: int, layout: str,
              args: argparse.Namespace) -> dict[str, float]:
    """Dense ms, pruned ms and their ratio, timed alternately over ``--rounds`` (medians of the
    per-round ratios, or with ``--statistic min`` the minimum of each over all rounds), and
    the cores other processes used meanwhile. The rounds are the closed loop's own routine
    (``alternate``), with its rounds and seconds per timing unless ``--rounds`` or
    ``--min-run-time`` say otherwise (``--min-run-time`` is passed to the loop too)."""
    setup = Setup("cpu", "float32", batch, args.threads, layout)
    x = place_inputs(torch.randn(batch, 3, 224, 224), setup)
    placed = [place_model(m, setup) for m in (dense, pruned)]
    wall, others = time.perf_counter(), others_cpu_s()
    rounds = alternate(placed, x, setup, args.rounds, args.min_run_time, args.statistic)
    contention = max(0.0, (others_cpu_s() - others) / (time.perf_counter() - wall))
    if args.statistic == "min":  # the least disturbed of all rounds, for each model
        dense_ms, pruned_ms = min(r[0] for r in rounds), min(r[1] for r in rounds)
        ratio = pruned_ms / dense_ms
    else:
        dense_ms, pruned_ms = statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)
        ratio = round_median(rounds, 1)
    return {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "ratio": ratio, "others_cores": contention,
            "rounds": rounds}


def bench_batch(name: str, model: torch.nn.Module, batch: int, args: argparse.Namespace,
                work: Path) -> dict[str, Any]:
    """One batch of one model: its table, the three plans, each pruned, verified and timed."""
    spec, shape = f"torchvision.models:{name}", f"{batch},3,224,224"
    x = torch.randn(batch, 3, 224, 224)
    table = Path(args.tables) / f"{name}.json"
    layout = pick_layout(model, batch, args, table)
    started = time.perf_counter()
    run_cli(["-q", "latency", spec, "--input-shape", shape, "--threads", str(args.threads),
             "--min-run-time", str(args.table_run_time), "--statistic", args.statistic, "-o", str(table)]
            + (["--channels-last"] if layout == "channels_last" else []))
    out: dict[str, Any] = {"layout": layout, "table_s": time.perf_counter() - started,
                           "load_before": os.getloadavg()}
    loop = ["--latency-refine", str(args.refine), "--latency-run-time", str(args.min_run_time)]
    recipes = {"latency": ["--target-latency", str(TARGET), "--latency-table", str(table), *loop],
               "uniform_macs": ["--target-macs", str(TARGET)],
               "latency_macs": ["--target-macs", str(TARGET), "--latency-table", str(table), *loop,
                                "--speed-weight", args.speed_weight]}
    macs_dense = total_macs(pruneconf.trace(model, x))
    for key, extra in recipes.items():
        path = work / f"{name}-{batch}-{key}.yaml"
        started = time.perf_counter()
        run_cli(["-q", "init", spec, "--input-shape", shape, "-o", str(path), *extra])
        planned = time.perf_counter() - started
        pruned, counts = pruned_copy(model, x, str(path))
        recorded = load_recipe(path).settings.latency_table or {}
        macs = total_macs(pruneconf.trace(pruned, x)) / macs_dense
        timing = time_pair(model, pruned, batch, layout, args)
        timing["mac_speedup"] = 1 / macs
        timing["measured_over_mac"] = (1 / timing["ratio"]) / timing["mac_speedup"]
        out[key] = {"macs": macs, "predicted": recorded.get("predicted"), "loop_measured": recorded.get("measured"),
                    "loop_history": recorded.get("history"), "kept_plan": recorded.get("kept_plan"),
                    "speed_weight": recorded.get("speed_weight"), "counts": counts, "plan_s": planned, **timing}
    out["load_after"] = os.getloadavg()
    return out


def bench_model(name: str, args: argparse.Namespace, work: Path,
                save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Every batch of one model; ``save`` gets the row after each batch (a long run keeps what it finished)."""
    model = getattr(torchvision.models, name)().eval()
    row: dict[str, Any] = {"model": name, "threads": args.threads, "statistic": args.statistic,
                           "speed_weight": args.speed_weight}  # as asked; each batch records the weight used
    for batch in args.batches:
        row[f"batch{batch}"] = bench_batch(name, model, batch, args, work)
        save(row)
        log.info("\n".join(render([{"model": name, f"batch{batch}": row[f"batch{batch}"]}])))
    return row


def median_ratio(timing: dict[str, Any]) -> float:
    """The median of the per-round pruned / dense ratios (each round timed both back to back)."""
    return round_median(timing["rounds"], 1)


def aware_vs_uniform(part: dict[str, Any]) -> float:
    """Speed of the latency-aware plan over the uniform one at the same MACs: each pruned model's
    time over the dense model's in its own session, so a load change between sessions cancels.
    Where the tool kept the uniform plan (same counts: the same model) it is 1 by construction."""
    aware, uniform = part["latency_macs"], part["uniform_macs"]
    if aware.get("counts") is not None and aware.get("counts") == uniform.get("counts"):
        return 1.0
    return median_ratio(uniform) / median_ratio(aware)


def kept_plan(part: dict[str, Any]) -> str:
    """Which plan ``--target-macs --latency-table`` kept, with what its own timing measured."""
    recorded = part["latency_macs"]
    plan = recorded.get("kept_plan")
    if plan is None:
        return ""
    measured = recorded.get("loop_measured")
    return f" ({plan})" if measured is None else f" ({plan}, tool measured {measured:.3f})"


def over_mac(timing: dict[str, Any]) -> float:
    """Measured speedup (the median of the per-round ratios) over the MAC-predicted speedup."""
    return (1 / median_ratio(timing)) / timing["mac_speedup"]


def speed_label(asked: Any, used: Any) -> str:
    """The aware plan's ``--speed-weight`` as asked (older rows hold a number or nothing, 1 then the default)
    and, for ``auto``, the weight the tool chose (the recipe records it)."""
    if asked == "auto":
        return f" (speed weight auto: {used:g})" if used is not None else ""
    return "" if asked is None or float(asked) == 1.0 else f" (--speed-weight {float(asked):g})"


def render(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | batch | layout | (a) plan A measured / dense, target 0.50: median of rounds (minima) "
             "| loop measured "
             "| table predicted | MACs left | (b) aware vs uniform at 0.5 MACs (plan the tool kept) "
             "| (c) measured / MAC-predicted "
             "speedup: plan A | aware at 0.5 MACs | uniform at 0.5 MACs | others' cores | load |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        for key in sorted((k for k in r if k.startswith("batch")), key=lambda k: int(k[5:])):
            b = r[key]
            a = b["latency"]
            loop = "" if not isinstance(a.get("loop_measured"), (int, float)) else f"{a['loop_measured']:.3f}"
            model = r["model"] + speed_label(r.get("speed_weight"), b["latency_macs"].get("speed_weight"))
            lines.append(f"| {model} | {key[5:]} | {b['layout']} | {median_ratio(a):.3f} ({a['ratio']:.3f}) | "
                         f"{loop} | {a['predicted']:.3f} | {a['macs']:.2f} | "
                         f"{aware_vs_uniform(b):.2f}x{kept_plan(b)} | "
                         f"{over_mac(a):.2f} | {over_mac(b['latency_macs']):.2f} | "
                         f"{over_mac(b['uniform_macs']):.2f} | {a['others_cores']:.2f} | "
                         f"{b['load_before'][0]:.1f} |")
    return lines


def _outcome(measured: list[str], missed: list[str], met: str = "met") -> str:
    """A verdict that never claims a model it did not measure."""
    if not measured:
        return "not measured"
    return f"{met} on all {len(measured)} measured ({', '.join(measured)})" if not missed \
        else "missed on " + ", ".join(missed)


def verdict(rows: list[dict[str, Any]]) -> list[str]:
    one = [r for r in rows if "batch1" in r]
    eight = [r for r in rows if "batch8" in r]
    a = [r["model"] for r in one if abs(median_ratio(r["batch1"]["latency"]) / TARGET - 1) > 0.1]
    b_slower = [r["model"] for r in one if aware_vs_uniform(r["batch1"]) < 1.0]
    b_fast = [r["model"] for r in one if aware_vs_uniform(r["batch1"]) >= 1.2]
    c = {key: [r["model"] for r in eight if over_mac(r["batch8"][key]) < 0.9]
         for key in ("latency", "latency_macs")}
    first, eighth = [r["model"] for r in one], [r["model"] for r in eight]
    return [f"(a) within +-10 % of {TARGET} at batch 1: {_outcome(first, a)}",
            f"(b) aware >= uniform at batch 1: {_outcome(first, b_slower)}"
            f"; >= 1.2x on {len(b_fast)} ({', '.join(b_fast) or 'none'})",
            *(f"(c) measured >= 0.9 x MAC-predicted at batch 8, {label}: {_outcome(eighth, c[key])}"
              for key, label in (("latency", "plan A"), ("latency_macs", "aware at 0.5 MACs")))]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision models")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--layout", choices=("auto", "contiguous", "channels_last"), default="auto")
    p.add_argument("--batches", default="1,8", help="batches to measure a table for, plan at and time")
    p.add_argument("--refine", type=int, default=4, help="--latency-refine of plan A (0: the table alone)")
    p.add_argument("--speed-weight", default="auto",
                   help="--speed-weight of the latency-aware plan at 0.5 MACs (default auto, the tool's)")
    p.add_argument("--rounds", type=int, default=ROUNDS,
                   help=f"alternating dense/pruned rounds per timing (default {ROUNDS}, as the closed loop)")
    p.add_argument("--min-run-time", type=float, default=RUN_TIME,
                   help=f"seconds per model timing, here and in the tool's loop (--latency-run-time; "
                        f"default {RUN_TIME})")
    p.add_argument("--table-run-time", type=float, default=0.02, help="--min-run-time of `pruneconf latency`")
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="of timed blocks (tables and models): min resists busy neighbours on a shared machine")
    p.add_argument("--tables", default="latency_tables", help="folder caching the latency tables")
    p.add_argument("-o", "--output", default="latency_aware.json")
    p.add_argument("--render", metavar="JSON",
                   help="print the tables of earlier runs' outputs (comma-separated) and exit")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        rows = [row for path in args.render.split(",") for row in json.loads(Path(path).read_text())["rows"]]
        print("\n".join(render(rows) + [""] + verdict(rows)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    Path(args.tables).mkdir(parents=True, exist_ok=True)
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            log.info("%s ...", name)
            def save(row: dict[str, Any]) -> None:
                Path(args.output).write_text(json.dumps({"machine": machine(), "rows": rows + [row],
                                                         "failed": failed}, indent=1))
            try:
                rows.append(bench_model(name, args, Path(tmp), save))
            except (SystemExit, pruneconf.PruneconfError) as exc:  # recorded; the other models still run
                log.error("%s: %s", name, exc)
                failed.append({"model": name, "error": str(exc)})
    print("\n".join(render(rows) + [""] + verdict(rows) + [f"{f['model']}: FAILED {f['error']}" for f in failed]))


def machine() -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average": os.getloadavg()}


if __name__ == "__main__":
    main()
