"""Benchmark: one whole prune, pruneconf against Torch-Pruning, end to end.

    python benchmarks/prune_speed.py                          # every model, 3 runs each
    python benchmarks/prune_speed.py --models resnet50,swin_t --runs 5 --csv out.csv --markdown out.md
    python benchmarks/prune_speed.py --models classification,segmentation --runs 1 --no-torch-pruning  # the zoo

Per torchvision model (``weights=None``, ``eval()``, input 1x3x224x224, sparsity 0.5), each
run in a fresh process (this script with the hidden ``--_worker`` flag), the tools
alternating run by run, the figure the median of ``--runs``:

- ``pruneconf``: ``Pruner(model, x, {"sparsity": 0.5}).prune()``, the one-shot route --
  trace, groups, ranking, and the dry run that shrinks the model and checks that it
  computes what the masked model does (kept when exact; otherwise the groups that break it
  are found, left whole, and apply shrinks and checks again);
- ``Torch-Pruning``: ``MagnitudePruner`` (L2 magnitude, ``pruning_ratio=0.5``, the 1000-class
  classifier ignored) from construction to the end of ``step()``; nothing is checked;
- ``forward``: one ``torch.no_grad()`` forward (median of 3 after a warm-up), for the
  forward's memory peak and the unit of the ratios where a run has none of its own: each
  pruneconf run also times 3 forwards of the dense model, built again after its prune, and its
  ``x forward`` divides by those (fresh processes ran one forward up to 1.6x apart on the
  development VM; within a process prune and forward move together).

Time is wall time from the first call to the pruned model (model construction excluded).
Peak is the RSS increase during it, kernel-tracked (see ``analysis_speed.call_with_peak``):
for ``forward`` that is one forward's activations, for the tools the prune's extra memory.
The memory bound checked is "peak of a prune <= model + one forward's activations + 50 %":
prune peak increase <= activations + 0.5 * (model + activations). A tool that raises is
"failed"; one running past ``--timeout`` s is killed ("timeout").

The load average and the CPU time other processes took during each run are recorded: on a
shared machine the figures are noisy, which the output says.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import inspect
import json
import os
import statistics
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # analysis_speed's helpers; pruneconf from this checkout
from analysis_speed import RESULT_TAG, call_with_peak, others_cpu_s, timed, worker_result  # noqa: E402

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "convnext_tiny", "densenet121", "regnet_y_1_6gf",
          "vit_b_16", "swin_t", "maxvit_t"]
TOOLS = ["pruneconf", "torch_pruning"]
ZOO = {"classification": "torchvision.models", "segmentation": "torchvision.models.segmentation"}
FORWARD_BOUND = 5.0  # issue 15: a whole prune in at most this many forwards of the dense model


def model_names(spec: str) -> list[str]:
    """The comma-separated names, with ``classification`` and ``segmentation`` standing for every
    torchvision model of that kind (``torchvision.models.list_models``)."""
    names: list[str] = []
    for item in filter(None, (m.strip() for m in spec.split(","))):
        if item in ZOO:
            import torchvision
            names += torchvision.models.list_models(module=importlib.import_module(ZOO[item]))
        else:
            names.append(item)
    return names


def prune_call(tool: str, model: Any, x: Any):
    """The zero-argument call that prunes ``model`` with ``tool``."""
    import torch
    if tool == "pruneconf":
        import pruneconf

        def prune() -> Any:
            return pruneconf.Pruner(model, x, {"sparsity": 0.5}).prune()
        return prune
    if tool == "torch_pruning":
        import torch_pruning as tp

        def prune() -> Any:
            ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
            with torch.enable_grad():  # Torch-Pruning traces the autograd graph
                pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                                   pruning_ratio=0.5, ignored_layers=ignored)
                pruner.step()
            return model
        return prune
    if tool == "forward":
        def forward() -> Any:
            with torch.no_grad():
                return model(x)
        return forward
    raise ValueError(tool)


def run_worker(model_name: str, tool: str, threads: int) -> dict[str, Any]:
    """Child-process side: build the model, then one measured call (three for ``forward``)."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(model_name)
    x = torch.randn(1, 3, 224, 224)
    model_mib = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    fn = prune_call(tool, model, x)
    wall0, others0 = time.perf_counter(), others_cpu_s()
    _, seconds, peak = call_with_peak(fn)
    out = {"status": "ok", "seconds": seconds, "peak_mib": peak, "model_mib": model_mib}
    if tool == "forward":
        out["seconds"] = median_time(fn)
    if tool == "pruneconf":  # a dense model built after the prune, so no copy weighs on its peak
        dense = build(model_name)
        out["forward_s"] = median_time(prune_call("forward", dense, x))
    out["others_cores"] = max(0.0, (others_cpu_s() - others0) / (time.perf_counter() - wall0))
    out["load"] = os.getloadavg()[0]
    return out


def build(model_name: str) -> Any:
    """The torchvision model in eval mode with random weights, its backbone's too (a
    segmentation builder would otherwise fetch ImageNet weights for the backbone)."""
    import torchvision
    builder = torchvision.models.get_model_builder(model_name)
    extra = {"weights_backbone": None} if "weights_backbone" in inspect.signature(builder).parameters else {}
    return builder(weights=None, **extra).eval()


def median_time(fn: Any, calls: int = 3) -> float:
    """Median seconds of ``calls`` calls of ``fn`` (each timed as ``analysis_speed.timed`` does)."""
    return statistics.median(timed(fn) for _ in range(calls))


def spawn(model_name: str, tool: str, args: argparse.Namespace) -> dict[str, Any]:
    """Parent side: one measurement in a fresh process."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", f"{model_name}:{tool}", "--threads", str(args.threads)]
    return worker_result(cmd, args.timeout)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median time and peak over the runs that succeeded; the first failure's status otherwise."""
    good = [r for r in runs if r["status"] == "ok"]
    if len(good) < len(runs) or not good:
        bad = next(r for r in runs if r["status"] != "ok")
        return {"status": bad["status"], "error": bad.get("error", "")}
    forwards = [r["forward_s"] for r in good if "forward_s" in r]
    return {"status": "ok", "seconds": statistics.median(r["seconds"] for r in good),
            **({"forward_s": statistics.median(forwards)} if forwards else {}),
            "peak_mib": statistics.median(r["peak_mib"] for r in good), "model_mib": good[0]["model_mib"],
            "others_cores": max(r["others_cores"] for r in good), "load": max(r["load"] for r in good)}


def row(name: str, res: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One table row: times, ratios, peaks and the memory bound for one model."""
    fw, pc, tp = res["forward"], res["pruneconf"], res.get("torch_pruning", {"status": "skipped"})
    out: dict[str, Any] = {"model": name}
    out["forward_s"] = pc.get("forward_s", fw.get("seconds"))  # the unit of pruneconf_x_forward
    out["pruneconf_s"] = pc.get("seconds") if pc["status"] == "ok" else pc["status"]
    out["torch_pruning_s"] = tp.get("seconds") if tp["status"] == "ok" else tp["status"]
    ok = pc["status"] == "ok" and fw["status"] == "ok"
    out["ratio_vs_tp"] = pc["seconds"] / tp["seconds"] if ok and tp["status"] == "ok" else None
    out["pruneconf_x_forward"] = pc["seconds"] / out["forward_s"] if ok else None
    out["model_mib"] = fw.get("model_mib")
    out["forward_peak_mib"] = fw.get("peak_mib")
    out["pruneconf_peak_mib"] = pc.get("peak_mib")
    out["torch_pruning_peak_mib"] = tp.get("peak_mib")
    if ok:
        limit = fw["peak_mib"] + 0.5 * (fw["model_mib"] + fw["peak_mib"])
        out["memory_bound_mib"] = limit
        out["within_bound"] = pc["peak_mib"] <= limit
    out["max_load"] = max(r.get("load", 0.0) for r in (fw, pc, tp))
    out["max_others_cores"] = max(r.get("others_cores", 0.0) for r in (fw, pc, tp))
    return out


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The Markdown table plus the summary lines."""
    head = ["model", "forward (s)", "pruneconf (s)", "Torch-Pruning (s)", "pruneconf / TP", "pruneconf / forward",
            "model MiB", "forward peak MiB", "pruneconf peak MiB", "TP peak MiB", "bound MiB", "load"]
    keys = ["model", "forward_s", "pruneconf_s", "torch_pruning_s", "ratio_vs_tp", "pruneconf_x_forward", "model_mib",
            "forward_peak_mib", "pruneconf_peak_mib", "torch_pruning_peak_mib", "memory_bound_mib", "max_load"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    ratios = [r["ratio_vs_tp"] for r in rows if r["ratio_vs_tp"] is not None]
    lines.append("")
    if ratios:
        lines.append(f"pruneconf / Torch-Pruning time: median {statistics.median(ratios):.2f}, worst {max(ratios):.2f} "
                     f"(over {len(ratios)} models where Torch-Pruning finishes)")
    times = {r["model"]: r["pruneconf_x_forward"] for r in rows if r["pruneconf_x_forward"] is not None}
    slow = [f"{m} {x:.1f}x" for m, x in times.items() if x > FORWARD_BOUND]
    failed = [r["model"] for r in rows if r["pruneconf_x_forward"] is None]
    lines.append(f"pruneconf within {FORWARD_BOUND:g}x a forward on {len(times) - len(slow)} of {len(times)} models"
                 f"{'; over: ' + ', '.join(slow) if slow else ''}{'; not timed: ' + ', '.join(failed) if failed else ''}")
    over = [r["model"] for r in rows if r.get("within_bound") is False]
    lines.append(f"memory bound exceeded by: {', '.join(over) if over else 'none'}")
    lines.append(f"median of {args.runs} runs, each in a fresh process, tools alternating, {args.threads} threads; "
                 f"load = the highest 1-minute load average seen; the machine's other processes make figures noisy")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma-separated torchvision names; 'classification' and 'segmentation' add every such model")
    p.add_argument("--runs", type=int, default=3, help="runs per tool and model (the median is reported)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each run")
    p.add_argument("--timeout", type=float, default=300.0, help="kill a run after this many seconds")
    p.add_argument("--no-torch-pruning", action="store_true", help="time pruneconf alone")
    p.add_argument("--csv", help="also write the rows as CSV to this file")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args._worker:  # child: exactly one tagged JSON line
        try:
            out = run_worker(*args._worker.split(":"), args.threads)
        except Exception as exc:  # report it, so one broken model does not stop the run
            out = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        print(RESULT_TAG + json.dumps(out), flush=True)
        return
    tools = TOOLS[:1] if args.no_torch_pruning else TOOLS
    rows = []
    for name in model_names(args.models):
        runs: dict[str, list[dict[str, Any]]] = {"forward": [spawn(name, "forward", args)]}
        for i in range(args.runs):
            for tool in tools if i % 2 == 0 else tools[::-1]:
                if any(r["status"] != "ok" for r in runs.get(tool, [])):
                    continue  # it failed or timed out once: more runs would only cost time
                r = spawn(name, tool, args)
                runs.setdefault(tool, []).append(r)
                print(f"[{name:>15}] {tool:<13} {fmt(r.get('seconds', r['status'])):>8} s  peak "
                      f"{fmt(r.get('peak_mib'))} MiB  load {fmt(r.get('load'))}  {r.get('error', '')}",
                      file=sys.stderr, flush=True)
        rows.append(row(name, {tool: summarise(rs) for tool, rs in runs.items()}))
    lines = markdown(rows, args)
    print("\n".join(lines))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(lines) + "\n")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
