"""The ``pruneconf`` command line.

Exit status: 0 on success, 2 for bad input (a wrong MODEL, shape, option, recipe or weights
file, a model that cannot be traced), 1 for a bug in pruneconf. Errors print one line;
``--debug`` adds the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn, Sequence

from .._version import __version__
from ..errors import PruneconfError
from .commands import cmd_export, cmd_flops, cmd_graph, cmd_init, cmd_prune, cmd_report, cmd_show
from .common import (METRIC_CHOICES, add_calibration, add_device, add_model_options, add_output, add_recipe_options,
                     add_set, add_trust_options)
from .explore import add_explore_parsers
from .latency import add_latency_parser, add_latency_report
from .targets import add_target

log = logging.getLogger("pruneconf")


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.partition(" ")[2]
        self.exit(2, f"pruneconf: error: {command + ': ' if command else ''}{message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pruneconf", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pruneconf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("init", help="trace MODEL and write (or refresh) an editable recipe")
    add_model_options(p)
    add_device(p)
    p.add_argument("-o", "--output", required=True, help="recipe file to write; an existing one is updated in place")
    p.add_argument("--sparsity", type=float, help="default sparsity of every group (default 0.5)")
    p.add_argument("--metric", choices=METRIC_CHOICES)
    p.add_argument("--round-to", type=int, help="keep channel counts multiples of this")
    add_set(p)
    add_target(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("show", help="print a recipe's groups as a table (builds nothing unless --check)")
    p.add_argument("recipe", help="recipe file")
    p.add_argument("--check", action="store_true",
                   help="rebuild and trace the model: fresh channel counts and shares, stale recipes flagged")
    add_trust_options(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("prune", help="prune a model as RECIPE says; write its weights and the applied recipe")
    add_recipe_options(p, "recipe file (from `pruneconf init`, edited)",
                       "weights to load first: a state dict (.pt, read with weights_only), .safetensors, or "
                       "safetensors shards (their directory or index JSON)")
    add_output(p, "pruned weights (.pt, or .safetensors); the applied recipe goes beside it as .yaml. A directory "
                  "(existing, ending in /, or suffix-less for sharded weights) streams the safetensors checkpoint "
                  "tensor by tensor, model on meta, into shards there, with the applied recipe as recipe.yaml")
    add_set(p)
    add_target(p)
    add_calibration(p)
    p.add_argument("--measure", action="store_true",
                   help="retrace the pruned model to measure its MACs and parameters (default: predicted from the plan)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("report", help="per group: requested vs realised sparsity, channels, params and MACs")
    add_recipe_options(p, "recipe file (an applied one reports what was applied)",
                       "state dict to rank channels with (global mode)")
    add_set(p)
    p.add_argument("--csv", help="also write the report as CSV to this file")
    add_latency_report(p)
    add_calibration(p)
    p.add_argument("--force", action="store_true", help="replace an existing CSV file")
    p.set_defaults(func=cmd_report)

    add_explore_parsers(sub)
    add_latency_parser(sub)

    p = sub.add_parser("flops", help="MACs, params and tutorial FLOPs of MODEL, before and after a recipe")
    add_model_options(p)
    p.add_argument("--recipe", help="recipe to apply for the 'after' column")
    add_calibration(p)
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("export", help="rebuild a pruned model from its applied recipe and export it")
    add_recipe_options(p, "applied recipe (written by `pruneconf prune`)", "weights written by `pruneconf prune`")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    add_output(p, "the exported model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("graph", help="export MODEL's traced op graph (.graphml or .dot)")
    add_model_options(p)
    add_output(p, "graph file (.graphml or .dot)")
    p.set_defaults(func=cmd_graph)
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:2000]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.ERROR if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except BrokenPipeError:  # `pruneconf show ... | head`
        return 0
    except PruneconfError as exc:
        if args.debug:
            raise
        print(f"pruneconf: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"pruneconf: internal error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
