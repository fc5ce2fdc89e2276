"""What every command shares: option groups, building the model (under the trust rule), outputs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ConfigError

METRIC_CHOICES = ("l1_norm", "l2_norm", "fpgm", "random", "bn_gamma", "activation", "taylor")


def model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``--model-arg num_classes=10`` values, typed as YAML scalars."""
    from ruamel.yaml import YAML

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"expected KEY=VALUE with KEY a keyword argument, got '{pair}'", key="--model-arg")
        try:
            out[key] = YAML(typ="safe").load(value)
        except Exception as exc:  # noqa: BLE001 - ruamel raises many kinds for bad YAML
            raise ConfigError(f"'{value}' is not a YAML value: {type(exc).__name__}", key="--model-arg") from None
    return out


def input_specs(shapes: Sequence[str]):
    from ..models import check_input_sizes, parse_input_shape

    specs = [parse_input_shape(s) for s in shapes]
    check_input_sizes(specs)
    return specs


def analyse_model(model_spec: str, shapes: Sequence[str], kwargs: Mapping[str, Any] | None = None,
                  device: str = "cpu"):
    """Build the model (named on the command line), trace it on example inputs, resolve its
    groups. Returns the graph, the groups, the input specs and a ``make_pruner(recipe)`` on
    the same model (on ``device``: see :mod:`pruneconf.meta`)."""
    from ..groups import find_groups
    from ..meta import build_and_trace
    from ..pruner import Pruner

    specs = input_specs(shapes)
    model, inputs, graph, _ = build_and_trace(model_spec, kwargs, specs, device)
    return graph, find_groups(graph), specs, lambda recipe: Pruner(model, inputs, recipe)


def recipe_model(recipe, args: argparse.Namespace, device: str | None = None):
    """The model a recipe describes, and its example inputs (both on ``device``).

    ``--model`` names it on the command line (the user's choice, built as given). Else the
    recipe's ``model:`` is built only if it is in the zoo allow-list, or with
    ``--trust-recipe-model``; anything else is refused at the recipe's ``model:`` line.
    """
    from ..models import build_model
    from ..reproduce import recipe_inputs

    inputs = recipe_inputs(recipe, device)
    if args.model:
        return build_model(args.model, recipe.model_args, device=device), inputs
    if not recipe.model:
        raise recipe.error("no model to build: give --model or set `model:` in the recipe", "model")
    model = build_model(recipe.model, recipe.model_args, trusted=args.trust_recipe_model,
                        refuse=lambda message, key: recipe.error(message, key), device=device)
    return model, inputs


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="module:callable, path/to/file.py:callable, transformers:ModelClass or a config.json")
    p.add_argument("--input-shape", action="append", required=True, metavar="SHAPE",
                   help="example input shape, e.g. 1,3,224,224; 1,128:long for indices; input_ids=1,128:long "
                        "for a keyword input; repeat for several inputs")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword argument for the model constructor; repeatable")


def add_device(p: argparse.ArgumentParser) -> None:
    from ..meta import DEVICES

    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to build and trace MODEL: meta builds no weights (any size, in seconds); auto is "
                        "meta for transformers models (falling back to cpu if an op needs values), else cpu")


def add_recipe_options(p: argparse.ArgumentParser, recipe_help: str, weights_help: str | None) -> None:
    p.add_argument("recipe", help=recipe_help)
    add_trust_options(p)
    if weights_help:
        p.add_argument("--weights", help=weights_help)


def add_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="MODEL to build instead of the recipe's `model:` (you trust what you name)")
    p.add_argument("--trust-recipe-model", action="store_true",
                   help="build the recipe's `model:` even if it is not a torchvision/timm/transformers "
                        "builder: this imports and runs the code it names")


def add_calibration(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="MODULE:CALLABLE",
                   help="returns calibration batches (like the example inputs) for the activation and taylor "
                        "metrics; this runs the code you name")


def calibration(args: argparse.Namespace):
    """The batches ``--calibration`` names (the user's opt-in: never read from a recipe)."""
    from ..models import load_calibration

    return load_calibration(args.calibration) if getattr(args, "calibration", None) else None


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting (default_sparsity=0.3, mode=global) or a group's sparsity "
                        "(features.1.conv.1=0); repeatable")


def add_output(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("-o", "--output", required=True, help=output_help)
    p.add_argument("--force", action="store_true", help="replace existing output files")


def refuse_overwrite(output: str, force: bool, *also: Path) -> None:
    """Outputs that exist are only replaced with --force (and then atomically)."""
    for path in (Path(output), *also):
        if path.exists() and not force:
            raise ConfigError("exists; pass --force to overwrite it", path=str(path), key="--output")


def refuse_outputs(directory: Path, names: Sequence[str], force: bool) -> None:
    refuse_overwrite(str(directory / names[0]), force, *(directory / name for name in names[1:]))
