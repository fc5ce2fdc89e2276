"""``sweep`` and ``sensitivity``: many recipes for one model named on the command line.

Launched with ``torchrun --nproc_per_node N``, both deal their points out across the N
processes (:mod:`pruneconf.distributed`); rank 0 writes the same files one process would.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .common import (METRIC_CHOICES, add_calibration, add_model_options, add_set, calibration, input_specs,
                     model_args, refuse_outputs)
from .latency import add_refine_options, check_refine_options

log = logging.getLogger("pruneconf")


def _explore_setup(args: argparse.Namespace):
    """The model (weights loaded), example inputs, a pruner on them, and the recipe builder."""
    from ..distributed import broadcast_model
    from ..models import build_model, example_inputs
    from ..pruner import Pruner
    from ..reproduce import load_weights

    kwargs = model_args(args.model_arg)
    specs = input_specs(args.input_shape)
    model = build_model(args.model, kwargs)
    if args.weights:
        load_weights(model, args.weights)
    broadcast_model(model)  # under torchrun: every rank explores rank 0's model, even unseeded random weights
    inputs = example_inputs(specs)
    pruner = Pruner(model, inputs)
    centers = [g.center for g in pruner.groups.prunable]

    def make_doc(settings: Mapping[str, Any]):
        from ..recipe.overrides import apply_overrides
        from ..recipe import build_recipe

        fixed = {k: v for k, v in (("metric", args.metric), ("round_to", args.round_to)) if v is not None}
        doc = build_recipe(pruner.groups, model=args.model, model_args=kwargs, input_shapes=specs,
                           settings={**fixed, **settings})
        return apply_overrides(doc, args.set, centers)

    return model, inputs, pruner, make_doc


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..distributed import rank_and_world, torchrun_group
    from ..explore.plot import plot_sweep, require_matplotlib
    from ..explore.sweep import parse_sparsities, recipe_name, run_sweep, sweep_csv, sweep_markdown
    from ..recipe import write_atomic

    by_latency = args.target_latency is not None
    if by_latency and args.latency_table is None:
        raise ConfigError("latency targets are planned on a measured table: add --latency-table FILE "
                          "(from `pruneconf latency`)", key="--target-latency")
    check_refine_options(args)
    label = "target_latency" if by_latency else "sparsity"
    values = parse_sparsities(args.target_latency, "--target-latency", True) if by_latency else \
        parse_sparsities(args.sparsity)
    if any(pair.partition("=")[0].strip() == "default_sparsity" for pair in args.set):
        raise ConfigError("the sweep sets default_sparsity at each point; use --sparsity", key="--set")
    require_matplotlib()
    out = Path(args.output)
    refuse_outputs(out, [recipe_name(v, label) for v in values] + ["table.md", "table.csv", "plot.png"], args.force)
    with torchrun_group():
        if args.latency and rank_and_world()[1] > 1:
            log.warning("--latency under torchrun: ranks time their points at once on shared cores; "
                        "quote latencies measured in one process")
        model, inputs, pruner, make_doc = _explore_setup(args)
        doc_for = _latency_docs(args, pruner, make_doc) if by_latency else lambda s: make_doc({"default_sparsity": s})
        points = run_sweep(model, inputs, values, doc_for, out, with_latency=args.latency,
                           calibration=calibration(args), label=label)
        if rank_and_world()[0] != 0:
            return 0
    write_atomic(out / "table.md", sweep_markdown(points, label))
    write_atomic(out / "table.csv", sweep_csv(points, label))
    plot_sweep(points, out / "plot.png", title=args.model)
    print(sweep_markdown(points, label), end="")
    log.info("wrote %d recipes, table.md, table.csv and plot.png to %s", len(values), out)
    return 0


def _latency_docs(args: argparse.Namespace, pruner, make_doc):
    """``target -> recipe document`` planned on ``--latency-table`` (the table is read and the
    channels scored once, on the dense model, for every point)."""
    from ..explore.latency_plan import write_latency_plan
    from ..recipe.load import recipe_from_document
    from .latency import latency_target_plan, load_table

    table = load_table(args, pruner.graph, None)
    base = recipe_from_document(make_doc({"default_sparsity": 0.0}), "sweep")
    scores = pruner.channel_scores([g.center for g in pruner.groups.prunable if g.center in table.groups])

    def doc_for(target: float):
        doc = make_doc({"default_sparsity": 0.0})
        plan, measured = latency_target_plan(args, pruner, base, table, scores, target)
        write_latency_plan(doc, pruner.groups, plan, table, base.settings.round_to, target, None, measured)
        return doc
    return doc_for


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..distributed import rank_and_world, torchrun_group
    from ..recipe.budget import write_budget
    from ..explore.plot import plot_sensitivity, require_matplotlib
    from ..explore.sensitivity import analyse_sensitivity, budget_by_sensitivity, sensitivity_csv
    from ..explore.sweep import parse_sparsities
    from ..models import load_callable
    from ..recipe import write_atomic
    from ..recipe.applied import record_calibration
    from ..recipe.load import recipe_from_document
    from ..recipe.yamlio import dump_document

    sparsities = parse_sparsities(args.sparsities)
    evaluate = load_callable(args.eval, key="--eval")
    require_matplotlib()
    out = Path(args.output)
    names = ["sensitivity.csv", "sensitivity.png"] + (["recipe.yaml"] if args.budget is not None else [])
    refuse_outputs(out, names, args.force)
    with torchrun_group():
        model, _, pruner, make_doc = _explore_setup(args)
        doc = make_doc({"default_sparsity": 0.0})
        recipe = recipe_from_document(doc, str(out / "recipe.yaml"))
        result = analyse_sensitivity(model, pruner.groups, recipe, evaluate, sparsities, pruner.skipped(),
                                     calibration(args))
        if rank_and_world()[0] != 0:
            return 0
    write_atomic(out / "sensitivity.csv", sensitivity_csv(result, pruner.groups))
    plot_sensitivity(result, out / "sensitivity.png")
    if args.budget is not None:
        kept = budget_by_sensitivity(result, pruner.groups, recipe, args.budget)
        write_budget(doc, pruner.groups, kept, args.budget, recipe.settings.round_to,
                     recipe.dropping_conv_groups(pruner.groups[c] for c in kept))
        if result.calibration_batches:
            record_calibration(doc, result.calibration_batches)
        recipe_from_document(doc, str(out / "recipe.yaml"))
        write_atomic(out / "recipe.yaml", dump_document(doc))
    log.info("wrote %s to %s", ", ".join(names), out)
    return 0


def _add_explore_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    add_calibration(p)
    p.add_argument("--weights", help="state dict to load first (torch.save of model.state_dict())")
    p.add_argument("--metric", choices=METRIC_CHOICES)
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    add_set(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace existing output files")


def add_explore_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="one recipe per sparsity, a table and a plot of MACs/params/latency")
    _add_explore_options(p)
    p.add_argument("--sparsity", default="0.1:0.9:0.1", help="START:STOP:STEP (stop included) or a list a,b,c")
    p.add_argument("--latency", action="store_true", help="also time each pruned model on the CPU")
    p.add_argument("--target-latency", metavar="LIST",
                   help="sweep latency targets instead of sparsities (START:STOP:STEP or a,b,c; fractions of the "
                        "measured dense latency), each planned on --latency-table")
    p.add_argument("--latency-table", metavar="FILE", help="table from `pruneconf latency` for --target-latency")
    add_refine_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sensitivity", help="prune each group alone, record a metric, plan a budget")
    _add_explore_options(p)
    p.add_argument("--eval", required=True, metavar="MODULE:FUNCTION",
                   help="fn(model) -> float, higher is better (e.g. accuracy on a held-out batch)")
    p.add_argument("--sparsities", default="0.25,0.5,0.75", help="sparsities to test per group")
    p.add_argument("--budget", type=float, metavar="FRACTION",
                   help="also write recipe.yaml keeping this fraction of the MACs, least sensitive groups first")
    p.set_defaults(func=cmd_sensitivity)
