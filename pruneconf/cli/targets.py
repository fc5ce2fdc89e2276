"""Recipe targets (``--target-macs``, ``--target-latency``): the options and their planning."""
from __future__ import annotations

import argparse
from typing import Sequence

from ..errors import ConfigError
from .latency import add_latency_target, check_latency_options, plan_latency_document


def add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target-macs", type=float, metavar="FRACTION",
                   help="choose per-group sparsities so the model keeps this fraction of its MACs (e.g. 0.5)")
    add_latency_target(p)


def plan_document(doc, args: argparse.Namespace, centers: Sequence[str] | None, make_pruner):
    """Apply ``--set`` then ``--target-macs`` or ``--target-latency`` to a recipe document, in place.

    ``make_pruner(recipe)`` builds the model a budget is planned on. Returns the checked recipe.
    """
    from ..recipe.budget import plan_budget, write_budget
    from ..recipe.overrides import overridden_recipe
    from ..recipe.load import recipe_from_document

    path = str(args.output if args.command == "init" else args.recipe)
    with_table = check_latency_options(args)
    recipe = overridden_recipe(doc, args.set, path, centers)
    if args.target_macs is None and not with_table:
        return recipe
    if args.target_macs is not None and not 0 < args.target_macs <= 1:
        raise ConfigError(f"expected a fraction of the dense MACs in (0, 1], got {args.target_macs}",
                          key="--target-macs")
    pruner = make_pruner(recipe)
    if with_table:
        plan_latency_document(doc, args, recipe, pruner)
        return recipe_from_document(doc, path)
    kept = plan_budget(pruner.groups, recipe, args.target_macs, pruner.skipped())
    write_budget(doc, pruner.groups, kept, args.target_macs, recipe.settings.round_to,
                 recipe.dropping_conv_groups(pruner.groups[c] for c in kept))
    return recipe_from_document(doc, path)
