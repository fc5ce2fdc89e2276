"""The commands on one model or one recipe: init, show, graph, prune, report, flops, export."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ConfigError
from .common import analyse_model, calibration, input_specs, model_args, recipe_model, refuse_overwrite
from .latency import latency_report
from .targets import plan_document
from .stream import cmd_prune_streamed, is_streamed, log_costs

log = logging.getLogger("pruneconf")


def cmd_init(args: argparse.Namespace) -> int:
    from ..recipe import build_recipe, write_atomic
    from ..recipe.yamlio import dump_document

    kwargs = model_args(args.model_arg)
    _, groups, specs, make_pruner = analyse_model(args.model, args.input_shape, kwargs, args.device)
    settings = {k: v for k, v in (("default_sparsity", args.sparsity), ("metric", args.metric),
                                  ("round_to", args.round_to)) if v is not None}
    existing = _existing_recipe(args.output)
    doc = build_recipe(groups, model=args.model, model_args=kwargs, input_shapes=specs, settings=settings,
                       existing=existing)
    plan_document(doc, args, [g.center for g in groups.prunable], make_pruner)
    write_atomic(args.output, dump_document(doc))
    log.info("wrote %s: %d groups, %d prunable", args.output, len(groups), len(groups.prunable))
    return 0


def _existing_recipe(path: str):
    """The recipe ``init`` refreshes in place; a file there that is no recipe is never replaced."""
    from ..recipe import load_document

    if not Path(path).exists():
        return None
    doc = load_document(path)
    if not isinstance(doc, dict):
        raise ConfigError("exists and is not a recipe (expected a mapping of recipe keys): init refreshes a "
                          "recipe in place and replaces nothing else; choose another output", path=path)
    return doc


def cmd_show(args: argparse.Namespace) -> int:
    from ..groups import find_groups
    from ..recipe import load_document
    from ..recipe.load import recipe_from_document
    from ..recipe.show import show_recipe, show_traced
    from ..trace import trace
    from ..trace.fingerprint import fingerprint

    doc = load_document(args.recipe)
    recipe = recipe_from_document(doc, args.recipe)
    if not (args.check or args.model):
        print(show_recipe(recipe, doc))
        return 0
    model, inputs = recipe_model(recipe, args)
    groups = find_groups(trace(model, inputs))
    if recipe.fingerprint not in (None, fingerprint(groups.graph)):
        log.warning("%s: fingerprint %s does not match the model's %s: the recipe is stale", args.recipe,
                    recipe.fingerprint, fingerprint(groups.graph))
    print(show_traced(recipe, groups))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from ..recipe import write_atomic
    from ..trace.export import to_dot, to_graphml

    suffix = Path(args.output).suffix.lower()
    writers = {".graphml": to_graphml, ".dot": to_dot, ".gv": to_dot}
    if suffix not in writers:
        raise ConfigError(f"expected a .graphml or .dot output file, got '{args.output}'", key="--output")
    refuse_overwrite(args.output, args.force)
    graph, _, _, _ = analyse_model(args.model, args.input_shape, model_args(args.model_arg))
    write_atomic(args.output, writers[suffix](graph))
    log.info("wrote %s: %d nodes, %d edges", args.output, graph.number_of_nodes(), graph.number_of_edges())
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from ..report import build_report, format_report
    from ..pruner import Pruner
    from ..recipe import load_document
    from ..reproduce import load_weights, save_weights

    if is_streamed(args):
        return cmd_prune_streamed(args)
    output = Path(args.output)
    applied_path = output.with_suffix(".yaml")
    if applied_path == Path(args.recipe) or output == Path(args.recipe):
        raise ConfigError("would overwrite the recipe itself; choose another output", key="--output")
    refuse_overwrite(args.output, args.force, applied_path)
    doc = load_document(args.recipe)
    batches = calibration(args)

    def pruner_for(recipe):
        model, inputs = recipe_model(recipe, args)
        if args.weights:
            load_weights(model, args.weights)
        return Pruner(model, inputs, recipe, calibration=batches)

    recipe = plan_document(doc, args, None, pruner_for)
    pruner = pruner_for(recipe)
    before = pruner.report()
    pruner.prune()
    plan = pruner.applied
    save_weights(pruner.model, output)
    pruner.write_applied(doc, applied_path)
    report = build_report(pruner.groups, plan, recipe)
    print(format_report(report))
    after = pruner.report() if args.measure else {"macs": report.macs[1], "params": report.params[1]}
    log_costs(len(plan.kept), before, after)
    log.info("wrote %s and %s", output, applied_path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..recipe.overrides import overridden_recipe
    from ..report import build_report, format_report, report_csv
    from ..pruner import Pruner
    from ..recipe import load_document, write_atomic
    from ..reproduce import applied_plan, load_weights

    if args.csv:
        refuse_overwrite(args.csv, args.force)
    recipe = overridden_recipe(load_document(args.recipe), args.set, args.recipe)
    model, inputs = recipe_model(recipe, args)
    if args.weights:
        load_weights(model, args.weights)
    plan = applied_plan(recipe, model, inputs) if recipe.applied else \
        Pruner(model, inputs, recipe, calibration=calibration(args)).plan()
    report = build_report(plan.groups, plan, recipe)
    print(format_report(report))
    if args.latency_table:
        print(latency_report(args, recipe, model, inputs, plan))
    if args.csv:
        write_atomic(args.csv, report_csv(report))
        log.info("wrote %s", args.csv)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from ..models import build_model, example_inputs
    from ..pruner import Pruner
    from ..table import format_table

    model = build_model(args.model, model_args(args.model_arg))
    pruner = Pruner(model, example_inputs(input_specs(args.input_shape)), args.recipe, calibration=calibration(args))
    before = pruner.report()
    rows = [["MACs", before["macs"]], ["params", before["params"]], ["FLOPs (tutorial)", before["flops"]]]
    headers = ["", "model"]
    if args.recipe:
        pruner.apply_masks()
        after = pruner.report()
        headers += ["pruned", "change"]
        for row, key in zip(rows, ("macs", "params", "flops")):
            row += [after[key], f"{100 * (after[key] / max(before[key], 1) - 1):+.2f}%"]
    print(format_table(headers, [[r[0]] + [f"{v:,}" if isinstance(v, int) else v for v in r[1:]] for r in rows],
                       numeric=[False] + [True] * (len(headers) - 1)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export
    from ..recipe.load import load_recipe
    from ..reproduce import load_pruned, load_weights

    refuse_overwrite(args.output, args.force)
    recipe = load_recipe(args.recipe)
    model, inputs = recipe_model(recipe, args)
    if recipe.applied:
        load_pruned(model, recipe, args.weights, inputs)
    elif args.weights:
        load_weights(model, args.weights)
    export(model, inputs, args.output, args.format)
    log.info("wrote %s (%s)", args.output, args.format)
    return 0
