"""The ``pruneconf`` command line.

Exit status: 0 on success, 2 for bad input (a wrong MODEL, shape or recipe, a model that
cannot be traced), 1 for anything else. Errors print one line; ``--debug`` adds the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._version import __version__
from .errors import ConfigError, PruneconfError, TraceError

log = logging.getLogger("pruneconf")


def _model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``--model-arg num_classes=10`` values, typed as YAML scalars."""
    from ruamel.yaml import YAML

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got '{pair}'", key="--model-arg")
        out[key] = YAML(typ="safe").load(value)
    return out


def analyse_model(model_spec: str, shapes: Sequence[str], model_args: Mapping[str, Any] | None = None):
    """Build the model, trace it on random inputs and resolve its groups."""
    from .groups import find_groups
    from .models import build_model, example_inputs, parse_input_shape
    from .trace import trace

    parsed = [parse_input_shape(s) for s in shapes]
    model = build_model(model_spec, model_args)
    graph = trace(model, example_inputs(parsed))
    return graph, find_groups(graph), [list(s) for s, _ in parsed]


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="module:callable or path/to/file.py:callable")
    p.add_argument("--input-shape", action="append", required=True, metavar="SHAPE",
                   help="example input shape, e.g. 1,3,224,224 (add :long for indices); repeat for several inputs")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model constructor; repeatable")


def _add_recipe_options(p: argparse.ArgumentParser, recipe_help: str, weights_help: str) -> None:
    p.add_argument("recipe", help=recipe_help)
    p.add_argument("--model", help="MODEL, if not the recipe's `model:`")
    p.add_argument("--weights", help=weights_help)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (default_sparsity=0.3, mode=global) or a group's sparsity "
                        "(features.1.conv.1=0); repeatable")


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-macs", type=float, metavar="FRACTION",
                   help="choose per-group sparsities so the model keeps this fraction of its MACs (e.g. 0.5)")


def _add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="MODULE:CALLABLE",
                   help="returns calibration batches (like the example inputs) for the activation and taylor metrics")


def _calibration(args: argparse.Namespace):
    from .models import load_calibration

    return load_calibration(args.calibration) if args.calibration else None


def _add_explore_options(p: argparse.ArgumentParser) -> None:
    _add_calibration(p)
    _add_model_options(p)
    p.add_argument("--weights", help="state dict to load first (torch.save of model.state_dict())")
    p.add_argument("--metric", choices=("l1_norm", "l2_norm", "fpgm", "random", "bn_gamma", "activation", "taylor"))
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    _add_set(p)
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--force", action="store_true", help="replace existing output files")


def _add_output(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--force", action="store_true", help="replace existing output files")


def cmd_init(args: argparse.Namespace) -> int:
    from .recipe import build_recipe, load_document, write_atomic
    from .recipe.yamlio import dump_document

    model_args = _model_args(args.model_arg)
    graph, groups, shapes = analyse_model(args.model, args.input_shape, model_args)
    settings = {k: v for k, v in (("default_sparsity", args.sparsity), ("metric", args.metric),
                                  ("round_to", args.round_to)) if v is not None}
    existing = load_document(args.output) if Path(args.output).is_file() else None
    doc = build_recipe(groups, model=args.model, model_args=model_args, input_shapes=shapes, settings=settings,
                       existing=existing)
    _plan_document(doc, args, [g.center for g in groups.prunable],
                   lambda recipe: _pruner_for_init(args, model_args, recipe))
    write_atomic(args.output, dump_document(doc))
    log.info("wrote %s: %d groups, %d prunable", args.output, len(groups), len(groups.prunable))
    return 0


def _pruner_for_init(args: argparse.Namespace, model_args: Mapping[str, Any], recipe):
    from .models import build_model, example_inputs, parse_input_shape
    from .pruner import Pruner

    inputs = example_inputs([parse_input_shape(s) for s in args.input_shape])
    return Pruner(build_model(args.model, model_args), inputs, recipe)


def _plan_document(doc, args: argparse.Namespace, centers: Sequence[str] | None, make_pruner):
    """Apply ``--set`` then ``--target-macs`` to a recipe document, in place.

    ``make_pruner(recipe)`` builds the model a budget is planned on. Returns the checked recipe.
    """
    from .explore.budget import plan_budget, write_budget
    from .explore.overrides import overridden_recipe
    from .recipe.load import recipe_from_document

    path = str(args.output if args.command == "init" else args.recipe)
    recipe = overridden_recipe(doc, args.set, path, centers)
    if args.target_macs is None:
        return recipe
    pruner = make_pruner(recipe)
    kept = plan_budget(pruner.groups, recipe, args.target_macs, pruner.skipped())
    write_budget(doc, pruner.groups, kept, args.target_macs, recipe.settings.round_to)
    return recipe_from_document(doc, path)


def cmd_show(args: argparse.Namespace) -> int:
    from .recipe.show import show_recipe

    print(show_recipe(args.recipe))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from .recipe import write_atomic
    from .trace.export import to_dot, to_graphml

    suffix = Path(args.output).suffix.lower()
    writers = {".graphml": to_graphml, ".dot": to_dot, ".gv": to_dot}
    if suffix not in writers:
        raise ConfigError(f"expected a .graphml or .dot output file, got '{args.output}'", key="--output")
    _refuse_overwrite(args)
    graph, _, _ = analyse_model(args.model, args.input_shape, _model_args(args.model_arg))
    write_atomic(args.output, writers[suffix](graph))
    log.info("wrote %s: %d nodes, %d edges", args.output, graph.number_of_nodes(), graph.number_of_edges())
    return 0


def _refuse_overwrite(args: argparse.Namespace, *also: Path) -> None:
    """Outputs that exist are only replaced with --force (and then atomically)."""
    for path in (Path(args.output), *also):
        if path.exists() and not args.force:
            raise ConfigError("exists; pass --force to overwrite it", path=str(path), key="--output")


def _recipe_model(recipe, model_spec: str | None):
    from .models import build_model
    from .reproduce import recipe_inputs

    spec = model_spec or recipe.model
    if not spec:
        raise recipe.error("no model to build: give --model or set `model:` in the recipe", "model")
    return build_model(spec, recipe.model_args), recipe_inputs(recipe)


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    from .explore.report import build_report, format_report
    from .pruner import Pruner
    from .recipe import load_document
    from .reproduce import load_weights

    output = Path(args.output)
    applied_path = output.with_suffix(".yaml")
    _refuse_overwrite(args, applied_path)
    doc = load_document(args.recipe)
    batches = _calibration(args)

    def pruner_for(recipe):
        model, inputs = _recipe_model(recipe, args.model)
        if args.weights:
            load_weights(model, args.weights)
        return Pruner(model, inputs, recipe, calibration=batches)

    recipe = _plan_document(doc, args, None, pruner_for)
    pruner = pruner_for(recipe)
    model = pruner.model
    before = pruner.report()
    plan = pruner.apply_masks()
    after = pruner.report()
    tmp = output.with_name(f".{output.name}.tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(output)
    pruner.write_applied(doc, applied_path)
    print(format_report(build_report(pruner.groups, plan, recipe)))
    log.info("pruned %d groups: MACs %s -> %s (%+.2f%%), params %s -> %s (%+.2f%%)", len(plan.kept),
             f"{before['macs']:,}", f"{after['macs']:,}", 100 * (after["macs"] / before["macs"] - 1),
             f"{before['params']:,}", f"{after['params']:,}", 100 * (after["params"] / before["params"] - 1))
    log.info("wrote %s and %s", output, applied_path)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .explore.overrides import overridden_recipe
    from .explore.report import build_report, format_report, report_csv
    from .pruner import Pruner
    from .recipe import load_document, write_atomic
    from .reproduce import applied_plan, load_weights

    if args.csv:
        _refuse_overwrite(argparse.Namespace(output=args.csv, force=args.force))
    recipe = overridden_recipe(load_document(args.recipe), args.set, args.recipe)
    model, inputs = _recipe_model(recipe, args.model)
    if args.weights:
        load_weights(model, args.weights)
    if recipe.applied:
        plan = applied_plan(recipe, model, inputs)
    else:
        plan = Pruner(model, inputs, recipe, calibration=_calibration(args)).plan()
    report = build_report(plan.groups, plan, recipe)
    print(format_report(report))
    if args.csv:
        write_atomic(args.csv, report_csv(report))
        log.info("wrote %s", args.csv)
    return 0


def _explore_setup(args: argparse.Namespace):
    """The model (weights loaded), example inputs, a pruner on them, and the recipe builder."""
    from .models import build_model, example_inputs, parse_input_shape
    from .pruner import Pruner
    from .reproduce import load_weights

    model_args = _model_args(args.model_arg)
    parsed = [parse_input_shape(s) for s in args.input_shape]
    model = build_model(args.model, model_args)
    if args.weights:
        load_weights(model, args.weights)
    inputs = example_inputs(parsed)
    pruner = Pruner(model, inputs)
    centers = [g.center for g in pruner.groups.prunable]

    def make_doc(settings: Mapping[str, Any]):
        from .explore.overrides import apply_overrides
        from .recipe import build_recipe

        fixed = {k: v for k, v in (("metric", args.metric), ("round_to", args.round_to)) if v is not None}
        doc = build_recipe(pruner.groups, model=args.model, model_args=model_args,
                           input_shapes=[list(s) for s, _ in parsed], settings={**fixed, **settings})
        return apply_overrides(doc, args.set, centers)

    return model, inputs, pruner, make_doc


def _refuse_outputs(directory: Path, names: Sequence[str], force: bool) -> None:
    for name in names:
        if (directory / name).exists() and not force:
            raise ConfigError("exists; pass --force to overwrite it", path=str(directory / name), key="--output")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .explore.plot import plot_sweep, require_matplotlib
    from .explore.sweep import parse_sparsities, recipe_name, run_sweep, sweep_csv, sweep_markdown
    from .recipe import write_atomic

    sparsities = parse_sparsities(args.sparsity)
    if any(pair.partition("=")[0].strip() == "default_sparsity" for pair in args.set):
        raise ConfigError("the sweep sets default_sparsity at each point; use --sparsity", key="--set")
    require_matplotlib()
    out = Path(args.output)
    _refuse_outputs(out, [recipe_name(s) for s in sparsities] + ["table.md", "table.csv", "plot.png"], args.force)
    model, inputs, _, make_doc = _explore_setup(args)
    points = run_sweep(model, inputs, sparsities, lambda s: make_doc({"default_sparsity": s}), out,
                       with_latency=args.latency, calibration=_calibration(args))
    write_atomic(out / "table.md", sweep_markdown(points))
    write_atomic(out / "table.csv", sweep_csv(points))
    plot_sweep(points, out / "plot.png", title=args.model)
    print(sweep_markdown(points), end="")
    log.info("wrote %d recipes, table.md, table.csv and plot.png to %s", len(sparsities), out)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .explore.budget import write_budget
    from .explore.plot import plot_sensitivity, require_matplotlib
    from .explore.sensitivity import analyse_sensitivity, budget_by_sensitivity, sensitivity_csv
    from .explore.sweep import parse_sparsities
    from .models import load_callable
    from .recipe import write_atomic
    from .recipe.applied import record_calibration
    from .recipe.load import recipe_from_document
    from .recipe.yamlio import dump_document

    sparsities = parse_sparsities(args.sparsities)
    evaluate = load_callable(args.eval, key="--eval")
    require_matplotlib()
    out = Path(args.output)
    names = ["sensitivity.csv", "sensitivity.png"] + (["recipe.yaml"] if args.budget is not None else [])
    _refuse_outputs(out, names, args.force)
    model, _, pruner, make_doc = _explore_setup(args)
    doc = make_doc({"default_sparsity": 0.0})
    recipe = recipe_from_document(doc, str(out / "recipe.yaml"))
    result = analyse_sensitivity(model, pruner.groups, recipe, evaluate, sparsities, pruner.skipped(),
                                 _calibration(args))
    write_atomic(out / "sensitivity.csv", sensitivity_csv(result, pruner.groups))
    plot_sensitivity(result, out / "sensitivity.png")
    if args.budget is not None:
        kept = budget_by_sensitivity(result, pruner.groups, recipe, args.budget)
        write_budget(doc, pruner.groups, kept, args.budget, recipe.settings.round_to)
        if result.calibration_batches:
            record_calibration(doc, result.calibration_batches)
        recipe_from_document(doc, str(out / "recipe.yaml"))
        write_atomic(out / "recipe.yaml", dump_document(doc))
    log.info("wrote %s to %s", ", ".join(names), out)
    return 0


def cmd_flops(args: argparse.Namespace) -> int:
    from .models import build_model, example_inputs, parse_input_shape
    from .pruner import Pruner
    from .table import format_table

    model = build_model(args.model, _model_args(args.model_arg))
    pruner = Pruner(model, example_inputs([parse_input_shape(s) for s in args.input_shape]), args.recipe,
                    calibration=_calibration(args))
    before = pruner.report()
    rows = [["MACs", before["macs"]], ["params", before["params"]], ["FLOPs (tutorial)", before["flops"]]]
    headers = ["", "model"]
    if args.recipe:
        pruner.apply_masks()
        after = pruner.report()
        headers += ["pruned", "change"]
        for row, key in zip(rows, ("macs", "params", "flops")):
            row += [after[key], f"{100 * (after[key] / before[key] - 1):+.2f}%"]
    print(format_table(headers, [[r[0]] + [f"{v:,}" if isinstance(v, int) else v for v in r[1:]] for r in rows],
                       numeric=[False] + [True] * (len(headers) - 1)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export
    from .recipe.load import load_recipe
    from .reproduce import load_pruned, load_weights

    _refuse_overwrite(args)
    recipe = load_recipe(args.recipe)
    model, inputs = _recipe_model(recipe, args.model)
    if recipe.applied:
        load_pruned(model, recipe, args.weights, inputs)
    elif args.weights:
        load_weights(model, args.weights)
    export(model, inputs, args.output, args.format)
    log.info("wrote %s (%s)", args.output, args.format)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pruneconf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pruneconf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init", help="trace MODEL and write (or refresh) an editable recipe")
    _add_model_options(p)
    p.add_argument("-o", "--output", required=True, help="recipe file to write; an existing one is updated in place")
    p.add_argument("--sparsity", type=float, help="default sparsity of every group (default 0.5)")
    p.add_argument("--metric", choices=("l1_norm", "l2_norm", "fpgm", "random", "bn_gamma", "activation", "taylor"))
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    _add_set(p)
    _add_target(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("show", help="print a recipe's groups as a table")
    p.add_argument("recipe", help="recipe file")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("prune", help="prune a model as RECIPE says; write its weights and the applied recipe")
    _add_recipe_options(p, "recipe file (from `pruneconf init`, edited)",
                        "state dict to load first (torch.save of model.state_dict())")
    _add_output(p, "pruned weights (.pt); the applied recipe goes beside it as .yaml")
    _add_set(p)
    _add_target(p)
    _add_calibration(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("report", help="per group: requested vs realised sparsity, channels, params and MACs")
    _add_recipe_options(p, "recipe file (an applied one reports what was applied)",
                        "state dict to rank channels with (global mode)")
    _add_set(p)
    p.add_argument("--csv", help="also write the report as CSV to this file")
    _add_calibration(p)
    p.add_argument("--force", action="store_true", help="replace an existing CSV file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sweep", help="one recipe per sparsity, a table and a plot of MACs/params/latency")
    _add_explore_options(p)
    p.add_argument("--sparsity", default="0.1:0.9:0.1", help="START:STOP:STEP (stop included) or a list a,b,c")
    p.add_argument("--latency", action="store_true", help="also time each pruned model on the CPU")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("sensitivity", help="prune each group alone, record a metric, plan a budget")
    _add_explore_options(p)
    p.add_argument("--eval", required=True, metavar="MODULE:FUNCTION",
                   help="fn(model) -> float, higher is better (e.g. accuracy on a held-out batch)")
    p.add_argument("--sparsities", default="0.25,0.5,0.75", help="sparsities to test per group")
    p.add_argument("--budget", type=float, metavar="FRACTION",
                   help="also write recipe.yaml keeping this fraction of the MACs, least sensitive groups first")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("flops", help="MACs, params and tutorial FLOPs of MODEL, before and after a recipe")
    _add_model_options(p)
    p.add_argument("--recipe", help="recipe to apply for the 'after' column")
    _add_calibration(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("export", help="rebuild a pruned model from its applied recipe and export it")
    _add_recipe_options(p, "applied recipe (written by `pruneconf prune`)", "weights written by `pruneconf prune`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    _add_output(p, "the exported model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("graph", help="export MODEL's traced op graph (.graphml or .dot)")
    _add_model_options(p)
    _add_output(p, "graph file (.graphml or .dot)")
    p.set_defaults(func=cmd_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except BrokenPipeError:  # `pruneconf show ... | head`
        return 0
    except (ConfigError, TraceError, PruneconfError) as exc:
        if args.debug:
            raise
        print(f"pruneconf: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"pruneconf: internal error: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
