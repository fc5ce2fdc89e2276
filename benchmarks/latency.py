"""Benchmark: does pruning buy the speedup its MAC count promises?

Per torchvision model (``weights=None``, ``eval()``): prune a copy with the public API,
``Pruner(model, x, {"sparsity": S, "round_to": R}).apply_masks()`` (which verifies the shrunk
model against the masked one), then time the dense and the pruned model. Predicted speedup =
dense MACs / pruned MACs (``pruneconf.analysis.total_macs``); measured speedup = dense time /
pruned time (see below). The issue's target on CPU: measured >= 0.9 x predicted.

Timing: ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronises CUDA itself)
under ``torch.inference_mode()``, after ``--warmup`` untimed calls, at a fixed thread count,
with memory reused from call to call as the tool's own timings do
(``pruneconf.explore.heap.reused_memory``: glibc would fault in fresh pages for every
activation over 32 MiB, a cost that depends on the process's history).
Dense and pruned are measured alternately ``--rounds`` times, so a slow phase of a shared
machine hits both. Each round gives a speedup (ratio of the two medians of its timed blocks);
the measured speedup is the median of those paired ratios, shown with their range. The
dense and pruned times are the medians over all blocks of all rounds, for scale.

Contention: like ``analysis_speed.py`` this waits for an idle CPU before timing, measures
the cores *other* processes used meanwhile (a busy neighbour on a shared core can distort a
timing many times over), reruns a contended measurement up to ``--retries`` times keeping
the least contended, and marks a row still contended with ``!``.

``--profile N`` adds, per CPU row, where the time goes: aten self time per operator, dense vs
pruned (``torch.profiler``, N forwards), convolutions split into 1x1, kxk and depthwise.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark as tbench

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analysis_speed import others_cpu_s, wait_for_idle  # noqa: E402  (the sibling benchmark)

import pruneconf  # noqa: E402
from pruneconf.analysis import total_macs  # noqa: E402
from pruneconf.explore.heap import reused_memory  # noqa: E402

MODELS = ["resnet50", "mobilenet_v2"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGET = 0.9  # measured speedup must reach this fraction of the MAC-predicted one


def prune_copy(model: nn.Module, example: torch.Tensor, sparsity: float, round_to: int) -> nn.Module:
    """A pruned deep copy of ``model``; ``model`` itself stays dense."""
    pruned = copy.deepcopy(model)
    pruneconf.Pruner(pruned, example, {"sparsity": sparsity, "round_to": round_to}).apply_masks()
    return pruned.eval()


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example``."""
    return total_macs(pruneconf.trace(model, example))


def prepare(model: nn.Module, x: torch.Tensor, device: str, dtype: torch.dtype,
            channels_last: bool) -> tuple[nn.Module, torch.Tensor]:
    """Model and input on the device, in the dtype and memory format being timed."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt).eval()
    return model, x.to(device=device, dtype=dtype).contiguous(memory_format=fmt)


def make_timer(model: nn.Module, x: torch.Tensor, threads: int) -> tbench.Timer:
    """A Timer for one inference-mode forward pass at ``threads`` intra-op threads."""
    def forward() -> None:
        with torch.inference_mode():
            model(x)
    return tbench.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)


def time_alternately(timers: dict[str, tbench.Timer], rounds: int, warmup: int,
                     min_run_time: float) -> dict[str, list[list[float]]]:
    """Per timer: the per-call times of each timed block, one list per round.

    Timers take turns within every round, so drifting machine load is shared between them.
    """
    out: dict[str, list[list[float]]] = {k: [] for k in timers}
    with reused_memory():
        for t in timers.values():
            t.timeit(warmup)  # first calls pick kernels and fill caches
        for _ in range(rounds):
            for key, t in timers.items():
                out[key].append(list(t.blocked_autorange(min_run_time=min_run_time).times))
    return out


def conv_kind(weight_shape: list[int]) -> str:
    """``depthwise`` (one input channel per group), ``1x1`` or ``kxk``: they scale differently."""
    if weight_shape[1] == 1:
        return "depthwise"
    return f"{weight_shape[2]}x{weight_shape[3]}"


def op_times(model: nn.Module, x: torch.Tensor, calls: int) -> dict[str, float]:
    """CPU self time in ms per forward by aten operator.

    Convolution kernels are split by kind (``[1x1]``, ``[depthwise]``...): a depthwise
    layer's MACs halve when its channels do, a 1x1 layer's quarter, and their cost per MAC
    differs a lot.
    """
    with torch.inference_mode(), torch.profiler.profile(record_shapes=True) as prof:
        for _ in range(calls):
            model(x)
    out: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        shapes = e.input_shapes or []
        key = e.key
        if "conv" in key and len(shapes) > 1 and len(shapes[1]) == 4:
            key += f" [{conv_kind(shapes[1])}]"
        out[key] = out.get(key, 0.0) + e.self_cpu_time_total / 1e3 / calls
    return {k: v for k, v in out.items() if v > 0}


def time_uncontended(timers: dict[str, tbench.Timer], args: argparse.Namespace,
                     device: str) -> tuple[dict[str, list[list[float]]], float | None]:
    """``time_alternately`` and the cores others used meanwhile (None off the CPU).

    On the CPU it first waits for an idle machine and reruns a contended measurement up to
    ``--retries`` times, keeping the least contended: threads sharing a core with a busy
    neighbour slow down many times over, which would make any speedup meaningless.
    """
    if device != "cpu":
        return time_alternately(timers, args.rounds, args.warmup, args.min_run_time), None
    best: tuple[dict[str, list[list[float]]], float] | None = None
    for _ in range(1 + args.retries):
        wait_for_idle(args.max_contention, args.idle_wait)
        wall0, others0 = time.perf_counter(), others_cpu_s()
        times = time_alternately(timers, args.rounds, args.warmup, args.min_run_time)
        contention = max(0.0, (others_cpu_s() - others0) / (time.perf_counter() - wall0))
        if best is None or contention < best[1]:
            best = (times, contention)
        if contention <= args.max_contention:
            break
    return best


def prune_and_count(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """The dense and pruned models (CPU, fp32), their MACs, and the example input."""
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    model = model.eval()
    pruned = prune_copy(model, x, args.sparsity, args.round_to)
    return {"x": x, "models": {"dense": model, "pruned": pruned},
            "macs": {"dense": count_macs(model, x), "pruned": count_macs(pruned, x)}}


def benchmark_pair(name: str, pair: dict[str, Any], args: argparse.Namespace, device: str,
                   dtype_name: str) -> dict[str, Any]:
    """One table row: predicted and measured speedup of a ``prune_and_count`` pair."""
    placed = {k: prepare(m, pair["x"], device, DTYPES[dtype_name], args.channels_last)
              for k, m in pair["models"].items()}
    timers = {k: make_timer(m, x, args.threads) for k, (m, x) in placed.items()}
    times, contention = time_uncontended(timers, args, device)
    median = {k: statistics.median(t for block in v for t in block) for k, v in times.items()}
    per_round = [statistics.median(d) / statistics.median(p)
                 for d, p in zip(times["dense"], times["pruned"])]
    macs = pair["macs"]
    predicted = macs["dense"] / macs["pruned"]
    measured = statistics.median(per_round)
    row = {"model": name, "device": device, "dtype": dtype_name, "batch_size": args.batch_size,
           "image_size": args.image_size, "threads": args.threads, "round_to": args.round_to,
           "sparsity": args.sparsity, "channels_last": args.channels_last,
           "macs_dense": macs["dense"], "macs_pruned": macs["pruned"],
           "predicted_speedup": predicted, "dense_s": median["dense"], "pruned_s": median["pruned"],
           "measured_speedup": measured, "measured_over_predicted": measured / predicted,
           "round_speedups": per_round, "others_cores": contention}
    if args.profile and device == "cpu":
        row["op_ms"] = {k: op_times(m, x, args.profile) for k, (m, x) in placed.items()}
    return row


def contended(row: dict[str, Any], max_contention: float) -> bool:
    """Whether other processes used over ``max_contention`` cores while the row was timed."""
    return row["others_cores"] is not None and row["others_cores"] > max_contention


def render(rows: list[dict[str, Any]], max_contention: float) -> list[str]:
    """The Markdown table plus the verdict on the CPU target, as lines.

    A ``!`` marks CPU rows timed while other processes used over ``max_contention`` cores.
    """
    head = ["model", "device", "dtype", "batch", "round_to", "GMACs dense", "GMACs pruned",
            "predicted x", "dense ms", "pruned ms", "measured x", "per-round x", "measured/predicted",
            "others' cores"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        spread = f"{min(r['round_speedups']):.2f}-{max(r['round_speedups']):.2f}"
        others = "-" if r["others_cores"] is None else f"{r['others_cores']:.2f}"
        others += "!" if contended(r, max_contention) else ""
        cells = [r["model"], r["device"], r["dtype"], str(r["batch_size"]), str(r["round_to"]),
                 f"{r['macs_dense'] / 1e9:.3f}", f"{r['macs_pruned'] / 1e9:.3f}",
                 f"{r['predicted_speedup']:.2f}", f"{r['dense_s'] * 1e3:.2f}",
                 f"{r['pruned_s'] * 1e3:.2f}", f"{r['measured_speedup']:.2f}", spread,
                 f"{r['measured_over_predicted']:.2f}", others]
        lines.append("| " + " | ".join(cells) + " |")
    cpu = [r for r in rows if r["device"] == "cpu"]
    if cpu:
        missed = [r["model"] for r in cpu if r["measured_over_predicted"] < TARGET]
        lines += ["", f"CPU target measured >= {TARGET} x predicted: "
                  + (f"missed by {', '.join(missed)}" if missed else "met by every model")]
    if any(contended(r, max_contention) for r in rows):
        lines.append("! = other processes competed for the CPU while timing: rerun when idle")
    return lines


def render_profile(row: dict[str, Any], top: int = 12) -> list[str]:
    """Per operator: dense and pruned ms per call and their ratio, costliest dense first."""
    dense, pruned = row["op_ms"]["dense"], row["op_ms"]["pruned"]
    total_d, total_p = sum(dense.values()), sum(pruned.values())
    lines = [f"{row['model']} on {row['device']} ({row['dtype']}): self time per forward by op",
             "| op | dense ms | share | pruned ms | share | dense/pruned |", "|---|---|---|---|---|---|"]
    for op in sorted(dense, key=dense.get, reverse=True)[:top]:
        d, p = dense[op], pruned.get(op, 0.0)
        ratio = f"{d / p:.2f}" if p else "-"
        lines.append(f"| {op} | {d:.2f} | {d / total_d:.0%} | {p:.2f} | {p / total_p:.0%} | {ratio} |")
    return lines


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "mkldnn": torch.backends.mkldnn.is_available()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def default_devices() -> str:
    """CPU, and the GPU when there is one."""
    return "cpu,cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision names")
    p.add_argument("--sparsity", type=float, default=0.5, help="recipe default sparsity")
    p.add_argument("--round-to", type=int, default=1, help="kept channels a multiple of this")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="intra-op threads (default: all usable cores)")
    p.add_argument("--devices", default=default_devices(), help="comma-separated: cpu, cuda")
    p.add_argument("--dtypes", default="fp32", help="comma-separated: fp32, bf16")
    p.add_argument("--channels-last", action="store_true", help="NHWC model and input")
    p.add_argument("--rounds", type=int, default=5, help="alternating dense/pruned rounds")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timed round")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    p.add_argument("--profile", type=int, default=0, metavar="CALLS",
                   help="also profile CALLS forwards per CPU row and print time by op")
    p.add_argument("--max-contention", type=float, default=0.3, help="others' cores to wait out")
    p.add_argument("--retries", type=int, default=2, help="reruns of a contended measurement")
    p.add_argument("--idle-wait", type=float, default=60.0, help="wait for an idle CPU (s)")
    p.add_argument("--json", help="also save rows and environment to this file")
    args = p.parse_args(argv)
    args.devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    for d in args.devices:
        if d not in ("cpu", "cuda"):
            p.error(f"unknown device {d!r}; choose from cpu, cuda")
    if "cuda" in args.devices and not torch.cuda.is_available():
        p.error("--devices cuda: no GPU is available")
    if not 0 <= args.sparsity < 1 or args.round_to < 1 or args.rounds < 1:
        p.error("need 0 <= --sparsity < 1, --round-to >= 1 and --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Benchmark every (model, device, dtype) and print the table."""
    import torchvision

    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # the profiler runs outside the Timers' thread setting
    torch.manual_seed(0)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        pair = prune_and_count(torchvision.models.get_model(name, weights=None), args)
        for device in args.devices:
            for dtype in args.dtypes:
                row = benchmark_pair(name, pair, args, device, dtype)
                rows.append(row)
                print(f"[{name:>13}] {device} {dtype}: predicted {row['predicted_speedup']:.2f}x "
                      f"measured {row['measured_speedup']:.2f}x  others' cores "
                      f"{row['others_cores'] or 0:.2f}", file=sys.stderr, flush=True)
    print("\n".join(render(rows, args.max_contention)))
    for row in rows:
        if "op_ms" in row:
            print("\n" + "\n".join(render_profile(row)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
