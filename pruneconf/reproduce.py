"""Rebuild a pruned model from its recipe: original architecture + applied section + weights.

No pickled model objects: the recipe names the model and says which channels each group
kept; the weights are a plain ``state_dict`` read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from .apply import shrink
from .errors import ConfigError
from .groups import find_groups
from .masks import PruningPlan
from .masks.experts import expert_drops
from .masks.plan import model_tensors
from .models import example_inputs, parse_input_shape
from .recipe.load import Recipe, check_against, load_recipe
from .trace import trace


def recipe_inputs(recipe: Recipe) -> Any:
    """Random example inputs of the shapes the recipe was traced with."""
    if not recipe.input_shapes:
        raise recipe.error("expected the example input shapes `pruneconf init` wrote", "input_shapes")
    return example_inputs([parse_input_shape(",".join(map(str, s))) for s in recipe.input_shapes])


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """A ``state_dict`` from ``path``; never unpickles arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("no such file", path=str(path), key="weights") from None
    except Exception as exc:  # noqa: BLE001 - corrupt file, or one that needs pickle
        raise ConfigError(f"not a weights-only state dict: {exc}", path=str(path), key="weights") from None


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a weights-only state dict into ``model`` strictly; a misfit is a located error."""
    try:
        model.load_state_dict(read_state_dict(path))
    except RuntimeError as exc:
        raise ConfigError(f"does not fit the model: {str(exc).splitlines()[0]}", path=str(path),
                          key="weights") from None


def applied_plan(recipe: Recipe, model: nn.Module, inputs: Any) -> PruningPlan:
    """The plan the recipe's ``applied`` section describes, checked against ``model``."""
    if not recipe.applied and not recipe.applied_experts:
        raise recipe.error("no applied section: this recipe was never applied (`pruneconf prune` writes one)",
                           "applied")
    groups = find_groups(trace(model, inputs))
    check_against(recipe, groups)
    for center, applied in recipe.applied.items():
        group = groups.by_center.get(center)
        if group is None or group.channels != applied.channels:
            found = "no such group" if group is None else f"the group has {group.channels} channels"
            raise recipe.error(f"applied to {applied.channels} channels, but {found} in this model",
                               f"applied.{center}")
    drops = expert_drops(model, groups.graph, recipe, model_tensors(model), applied=True)
    return PruningPlan(groups, {c: a.kept for c, a in recipe.applied.items()},
                       {c: a.sparsity for c, a in recipe.applied.items()}, drops)


def load_pruned(model: nn.Module, recipe: str | os.PathLike | Recipe,
                weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                example_inputs: Any = None) -> nn.Module:
    """Shrink a freshly built original ``model`` as ``recipe`` was applied, then load ``weights``.

    Loading is ``strict``: a state dict that does not fit the rebuilt architecture is an
    error, and the model is put back as it was.
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    inputs = example_inputs if example_inputs is not None else recipe_inputs(recipe)
    plan = applied_plan(recipe, model, inputs)
    state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else weights
    done = shrink(model, plan)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            done.undo()
            raise ConfigError(f"does not fit the pruned model: {str(exc).splitlines()[0]}",
                              path=str(weights) if isinstance(weights, (str, os.PathLike)) else None,
                              key="weights") from None
    return model
