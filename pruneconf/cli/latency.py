"""``pruneconf latency`` and the ``--target-latency`` / ``--latency-table`` options of the planners."""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from ..errors import ConfigError
from .common import add_model_options, input_specs, model_args

log = logging.getLogger("pruneconf")
DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def add_latency_parser(sub) -> None:
    p = sub.add_parser("latency", help="measure how each group's layers' latency changes with its kept channels")
    add_model_options(p)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads while timing (default 1)")
    p.add_argument("--channels-last", action="store_true", help="time 4-D tensors in channels_last memory format")
    p.add_argument("--min-run-time", type=float, default=0.05, metavar="SECONDS",
                   help="per timing; the whole run takes about (timings x this), logged before it starts")
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="of each timing's blocks: median, or min on a machine shared with busy neighbours")
    p.add_argument("-o", "--output", required=True,
                   help="table file (JSON); an existing one is a cache: a table for the same model, shapes and "
                        "setup is reused, others are kept beside the new one")
    p.add_argument("--force", action="store_true", help="measure again even if the file holds this table")
    p.set_defaults(func=cmd_latency)


def add_latency_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-latency", type=float, metavar="FRACTION",
                   help="choose per-group sparsities so the measured latency is this fraction of dense "
                        "(needs --latency-table)")
    p.add_argument("--latency-table", metavar="FILE",
                   help="table from `pruneconf latency`: plan --target-latency (or --target-macs) with it")
    p.add_argument("--speed-weight", type=speed_weight, default=None, metavar="W",
                   help="--target-macs with --latency-table: how much a step's time saved per MAC removed "
                        "counts against the importance it loses (its price is importance lost per ms saved x "
                        "(MACs removed per ms saved)^W, W from 0 to 16); larger buys more speed at the budget "
                        "and keeps less important channels. Default auto: the smallest W from 1 that the table "
                        "predicts as fast as the MACs promise (within --latency-tolerance)")
    add_refine_options(p)


def speed_weight(text: str) -> float | None:
    """``--speed-weight``: ``auto`` (None) or a number (its range is checked with the other options)."""
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number from 0 to 16, got {text!r}") from None


def add_refine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-refine", type=int, default=4, metavar="N",
                   help="--target-latency: time the planned model against the dense one here (on the table's "
                        "device, dtype, batch, threads and layout) and correct the plan up to N times until the "
                        "measured fraction is within --latency-tolerance of the target (and a second timing "
                        "confirms it); --target-macs: time the table's plan against the uniform plan and keep "
                        "the faster; 0 plans from the table alone, timing nothing (default 4)")
    p.add_argument("--latency-tolerance", type=float, default=0.05, metavar="FRACTION",
                   help="relative tolerance of the measured latency against the target and, for --speed-weight "
                        "auto, of the predicted latency against the MAC fraction (default 0.05)")
    p.add_argument("--latency-budget", type=float, default=300.0, metavar="SECONDS",
                   help="no further measurement once the loop has run this long (default 300)")
    p.add_argument("--latency-run-time", type=float, default=0.5, metavar="SECONDS",
                   help="per model and round of each whole-model timing (five alternating rounds; default 0.5)")


def _setup(args: argparse.Namespace, batch: int):
    import torch

    from ..explore.latency_table import Setup

    device = args.device
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"expected cpu, cuda or cuda:N, got '{device}'", key="--device")
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine", key="--device")
    if not 1 <= args.threads <= 1024:
        raise ConfigError(f"expected 1 to 1024 threads, got {args.threads}", key="--threads")
    if not (math.isfinite(args.min_run_time) and 0 < args.min_run_time <= 10):
        raise ConfigError(f"expected seconds in (0, 10], got {args.min_run_time}", key="--min-run-time")
    return Setup(device, args.dtype, batch, args.threads, "channels_last" if args.channels_last else "contiguous")


def _cached(path: Path, force: bool) -> dict:
    """The tables already in ``path``; a file there that is no table file is never replaced."""
    from ..explore.latency_table import read_tables

    if not path.exists():
        return {}
    try:
        return read_tables(path)
    except ConfigError as exc:
        raise ConfigError(f"exists and is not a latency table ({exc.message}); choose another output",
                          path=str(path), key="--output") from None


def cmd_latency(args: argparse.Namespace) -> int:
    from ..apply import unsupported_groups
    from ..explore.latency_measure import measure_table
    from ..explore.latency_table import dump_tables
    from ..groups import find_groups
    from ..meta import build_and_trace
    from ..recipe import write_atomic
    from ..trace.fingerprint import fingerprint

    specs = input_specs(args.input_shape)
    setup = _setup(args, specs[0].shape[0] if specs[0].shape else 1)
    out = Path(args.output)
    tables = _cached(out, args.force)
    model, inputs, graph, _ = build_and_trace(args.model, model_args(args.model_arg), specs, "cpu")
    shapes = [str(s) for s in specs]
    known = tables.get(setup.key)
    if not args.force and isinstance(known, dict) and known.get("fingerprint") == fingerprint(graph) \
            and known.get("input_shapes") == shapes:
        why = outdated(str(known.get("memory", "")), str(known.get("unit_inputs", "")))
        if not why:
            log.info("%s already holds the table for %s (%s); --force measures again", out, args.model, setup.key)
            return 0
        log.info("%s holds a table for %s (%s) %s: measuring again", out, args.model, setup.key, why)
    groups = find_groups(graph)
    skip = unsupported_groups(model, groups)
    table = measure_table(model, inputs, groups, setup, model_name=args.model, fingerprint=fingerprint(graph),
                          input_shapes=shapes, skip=skip, min_run_time=args.min_run_time,
                          statistic=args.statistic)
    tables[setup.key] = table
    write_atomic(out, dump_tables(tables))
    log.info("wrote %s: %s, %d groups, dense %.3f ms (%s)", out, setup.key, len(table.groups), table.dense_ms,
             table.hash)
    return 0


def outdated(memory: str, unit_inputs: str) -> str:
    """How a table's timings differ from this pruneconf's, in words ('' when they do not): one
    timed page faults (README, Timings reuse memory), or layers on inputs laid out otherwise
    than in the model (a channels_last ConvNeXt's Linear layers timed 1.5-4x slow)."""
    from ..explore.heap import memory_words, timing_memory
    from ..explore.latency_table import UNIT_INPUTS

    reasons = []
    if memory != timing_memory():
        reasons.append(f"timed {memory_words(memory)}, this pruneconf times "
                       f"{memory_words(timing_memory())}")
    if unit_inputs != UNIT_INPUTS:
        reasons.append("timed its layers on inputs in the default memory order, this pruneconf lays them out as "
                       "in the model")
    return "; ".join(reasons)


def load_table(args: argparse.Namespace, graph, batch: int | None):
    from ..explore.latency_table import select_table
    from ..trace.fingerprint import fingerprint

    table = select_table(args.latency_table, fingerprint(graph), batch)
    why = outdated(table.memory, table.unit_inputs)
    if why:
        log.warning("%s was %s: its milliseconds may mislead the plan; measure it again with "
                    "`pruneconf latency --force`", args.latency_table, why)
    return table


def plan_latency_document(doc, args: argparse.Namespace, recipe, pruner) -> None:
    """``--latency-table`` with ``--target-latency`` or ``--target-macs``: plan on the table, in place."""
    from ..explore.latency_plan import write_latency_plan

    if any(p.is_meta for p in pruner.model.parameters()):
        raise ConfigError("a latency plan weighs channel importance, which needs the weights: plan it in memory "
                          "(`init` or `prune` to a file), then stream the planned recipe", key="--latency-table")
    inputs = recipe.input_shapes or []
    batch = inputs[0].shape[0] if inputs and inputs[0].shape else None
    table = load_table(args, pruner.graph, batch)
    if [str(s) for s in inputs] != table.input_shapes:
        log.warning("the latency table was measured on inputs %s, the recipe traces %s: its timings may not "
                    "carry over", ", ".join(table.input_shapes), ", ".join(str(s) for s in inputs))
    parts = [g.center for g in pruner.groups.prunable if g.center in table.groups]
    scores = pruner.channel_scores(parts)
    if args.target_latency is None:
        plan, measured = mac_target_plan(args, pruner, recipe, table, scores)
    else:
        plan, measured = latency_target_plan(args, pruner, recipe, table, scores, args.target_latency)
    write_latency_plan(doc, pruner.groups, plan, table, recipe.settings.round_to, args.target_latency,
                       args.target_macs, measured)


def latency_target_plan(args: argparse.Namespace, pruner, recipe, table, scores, target: float):
    """The table's plan for ``target`` and, unless ``--latency-refine 0``, the closed loop that
    measures it here and corrects it (:mod:`~pruneconf.explore.latency_loop`); returns the plan
    and what the recipe records of the measurements (or that the loop was off)."""
    from ..explore.latency_loop import refine_plan
    from ..explore.latency_plan import plan_latency

    def plan_for(fraction: float):
        return plan_latency(pruner.groups, recipe, table, scores, target_latency=fraction, skip=pruner.skipped())

    if args.latency_refine == 0:
        return plan_for(target), {"loop": "off (--latency-refine 0): planned from the table alone"}
    timer = _timer(args, pruner, recipe, table)
    refined = refine_plan(plan_for, timer, target, args.latency_tolerance, args.latency_refine,
                          args.latency_budget, confirm=timer.confirm)
    log.info("latency target %.3f: planned for %.3f, table predicts %.3f, measured %.3f on %s (%d measurements)",
             target, refined.planned_for, refined.plan.fraction, refined.measured, table.setup.key,
             len(refined.steps) + sum(s.confirmed is not None for s in refined.steps))
    return refined.plan, refined.record()


def mac_target_plan(args: argparse.Namespace, pruner, recipe, table, scores):
    """``--target-macs`` with a table: the table's plan and, unless ``--latency-refine 0``, the
    uniform plan at the same MACs timed against it here; the faster is returned with what the
    recipe records of the timing (:func:`~pruneconf.explore.latency_loop.choose_faster`)."""
    from ..explore.latency_loop import choose_faster
    from ..explore.latency_plan import plan_mac_budget, uniform_mac_plan

    aware = plan_mac_budget(pruner.groups, recipe, table, scores, args.target_macs, pruner.skipped(),
                            getattr(args, "speed_weight", None), args.latency_tolerance)
    weight = {"speed_weight": round(aware.speed_weight, 3)}
    if args.latency_refine == 0:
        return aware, {**weight, "loop": "off (--latency-refine 0): the table's plan, not timed against the "
                                         "uniform plan"}
    timer = _timer(args, pruner, recipe, table)
    uniform = uniform_mac_plan(pruner.groups, recipe, table, args.target_macs, pruner.skipped())
    channels = {g.center: g.channels for g in pruner.groups.groups}
    chosen = choose_faster(aware, uniform, channels, timer.compare)
    return chosen.winner, {**weight, **chosen.record()}


def _timer(args: argparse.Namespace, pruner, recipe, table):
    """The whole-model timer, once :func:`~pruneconf.explore.latency_loop.check_machine` agrees
    this machine and the recipe's batch are what the table was measured for."""
    from ..explore.latency_loop import WholeModelTimer, check_machine

    shapes = recipe.input_shapes or []
    check_machine(table, shapes[0].shape[0] if shapes and shapes[0].shape else None)
    return WholeModelTimer(pruner.model, pruner.example_inputs, pruner.groups, table.setup,
                           args.latency_run_time, table.statistic)


def check_refine_options(args: argparse.Namespace) -> None:
    if not 0 <= args.latency_refine <= 20:
        raise ConfigError(f"expected 0 to 20 corrections, got {args.latency_refine}", key="--latency-refine")
    if not (math.isfinite(args.latency_tolerance) and 0 < args.latency_tolerance < 1):
        raise ConfigError(f"expected a relative tolerance in (0, 1), got {args.latency_tolerance}",
                          key="--latency-tolerance")
    if not (math.isfinite(args.latency_budget) and args.latency_budget > 0):
        raise ConfigError(f"expected seconds above 0, got {args.latency_budget}", key="--latency-budget")
    if not (math.isfinite(args.latency_run_time) and 0 < args.latency_run_time <= 10):
        raise ConfigError(f"expected seconds in (0, 10], got {args.latency_run_time}", key="--latency-run-time")


def check_latency_options(args: argparse.Namespace) -> bool:
    """Whether the latency planner runs; combinations that make no sense are errors."""
    target = getattr(args, "target_latency", None)
    table = getattr(args, "latency_table", None)
    if target is not None and not (math.isfinite(target) and 0 < target <= 1):
        raise ConfigError(f"expected a fraction of the dense latency in (0, 1], got {target}", key="--target-latency")
    if target is not None and table is None:
        raise ConfigError("a latency target is planned on a measured table: add --latency-table FILE "
                          "(from `pruneconf latency`)", key="--target-latency")
    if target is not None and args.target_macs is not None:
        raise ConfigError("give one target: --target-latency or --target-macs", key="--target-latency")
    weight = getattr(args, "speed_weight", None)
    if weight is not None and not (math.isfinite(weight) and 0 <= weight <= 16):
        raise ConfigError(f"expected a weight from 0 to 16, got {weight}", key="--speed-weight")
    if weight is not None and (table is None or args.target_macs is None):
        raise ConfigError("weighs speed against importance under a MAC budget: use it with --target-macs and "
                          "--latency-table", key="--speed-weight")
    if table is not None and target is None and args.target_macs is None:
        raise ConfigError("plans with the table need a target: --target-latency or --target-macs",
                          key="--latency-table")
    check_refine_options(args)
    return table is not None


def add_latency_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--latency-table", metavar="FILE",
                   help="also show the latency the table predicts for the plan and the latency measured here")


def latency_report(args: argparse.Namespace, recipe, model, inputs, plan) -> str:
    """One line: predicted (from the table) against measured latency of the plan, both over dense."""
    from ..explore.latency_measure import measure_plan
    from ..explore.latency_table import Predictor

    batch = recipe.input_shapes[0].shape[0] if recipe.input_shapes and recipe.input_shapes[0].shape else None
    table = load_table(args, plan.groups.graph, batch)
    recorded = (recipe.settings.latency_table or {}).get("hash")
    if recorded not in (None, table.hash):
        log.warning("the recipe was planned with table %s, not %s", recorded, table.hash)
    kept = {center: len(indices) for center, indices in plan.kept.items()}
    predicted = Predictor(table).ms(kept, recipe.dropping_conv_groups(plan.groups[c] for c in kept))
    dense, pruned = measure_plan(model, inputs, plan, table.setup, statistic=table.statistic)
    return (f"latency on {table.setup.key} ({table.device_name}), table {table.hash}: predicted "
            f"{predicted:.3f} ms ({predicted / table.dense_ms:.1%} of dense {table.dense_ms:.3f} ms); measured "
            f"{pruned:.3f} ms ({pruned / dense:.1%} of dense {dense:.3f} ms)")
