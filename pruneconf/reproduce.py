"""Rebuild a pruned model from its recipe: original architecture + applied section + weights.

No pickled model objects: the recipe names the model and says which channels each group
kept; the weights are a plain ``state_dict`` read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .apply import shrink
from .errors import ConfigError
from .groups import find_groups
from .masks import PruningPlan
from .masks.experts import expert_drops
from .masks.plan import model_tensors
from .models import example_inputs
from .recipe.load import Recipe, check_against, load_recipe
from .trace import trace


def recipe_inputs(recipe: Recipe, device: str | None = None) -> Any:
    """Random example inputs of the shapes, dtypes and names the recipe was traced with."""
    if not recipe.input_shapes:
        raise recipe.error("expected the example input shapes `pruneconf init` wrote", "input_shapes")
    return example_inputs(recipe.input_shapes, device=device)


def read_state_dict(path: str | os.PathLike) -> Mapping[str, torch.Tensor]:
    """A ``state_dict`` from ``path`` (``.safetensors``, a directory of safetensors shards or
    its index JSON, or ``torch.save`` read with ``weights_only=True``); never unpickles
    arbitrary objects."""
    from .stream.checkpoint import Checkpoint, is_sharded

    if is_sharded(path):
        return Checkpoint.open(path).load_all()
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError("no such file", path=str(path), key="weights") from None
    except ImportError:
        raise ConfigError("reading .safetensors needs safetensors: pip install safetensors", path=str(path),
                          key="weights") from None
    except Exception as exc:  # noqa: BLE001 - corrupt file, or one that needs pickle
        raise ConfigError(f"not a weights-only state dict: {str(exc).splitlines()[0][:300] if str(exc) else exc!r}",
                          path=str(path), key="weights") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ConfigError("expected a state dict (parameter names to tensors)", path=str(path), key="weights")
    return state


def _tied_names(model: nn.Module) -> dict[str, str]:
    """Parameter names that alias an earlier one (tied embeddings): name -> the first name."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        tied.update({name: first[id(p)]} if id(p) in first else {})
        first.setdefault(id(p), name)
    return tied


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)``, except that a tied parameter may be stored once
    (safetensors keeps no aliases)."""
    tied = _tied_names(model)
    full = {**{alias: state[name] for alias, name in tied.items() if alias not in state and name in state}, **state}
    model.load_state_dict(full, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a weights-only state dict into ``model`` strictly; a misfit is a located error."""
    state = read_state_dict(path)
    try:
        load_state(model, state)
    except RuntimeError as exc:
        raise ConfigError(f"does not fit the model: {str(exc).splitlines()[0]}", path=str(path),
                          key="weights") from None


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state dict atomically: safetensors for a ``.safetensors`` path (tied
    parameters stored once), else ``torch.save``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tied = _tied_names(model)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
            load_state(model, state)
        except RuntimeError as exc:
            done.undo()
            raise ConfigError(f"does not fit the pruned model: {str(exc).splitlines()[0]}",
                              path=str(weights) if isinstance(weights, (str, os.PathLike)) else None,
                              key="weights") from None
    return model
