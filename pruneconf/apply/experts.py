"""Expert counts after whole experts are dropped: the numbers the model's code reads.

transformers' MoE code reads the expert count from the experts module and the router
(``num_experts``, e.g. ``one_hot(top_k_index, num_classes=self.num_experts + 1)`` and
``histc(bins=self.num_experts)``) and, for the auxiliary loss, from the config
(``num_local_experts`` for Mixtral, ``num_experts`` for Qwen MoE). Module attributes are
set per layer, so layers may keep different numbers of experts. The config holds one
number for all layers: it is updated only when every MoE layer keeps the same count, and
otherwise left as it was (planning warns: the router-logit auxiliary loss, off by default,
assumes equal counts).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..masks.plan import PruningPlan
from ..recipe.experts import expert_layers

COUNTS = ("num_experts", "num_local_experts", "n_routed_experts")


def _counts(obj: Any, old: int, new: int) -> list[tuple[Any, str, int]]:
    """Count attributes of ``obj`` equal to ``old`` (not a config's aliases of another one)."""
    aliases = getattr(obj, "attribute_map", {})
    return [(obj, name, new) for name in COUNTS
            if name not in aliases and type(getattr(obj, name, None)) is int and getattr(obj, name) == old]


def expert_count_changes(model: nn.Module, plan: PruningPlan) -> list[tuple[Any, str, int]]:
    """``(module or config, attribute, new count)`` for every expert count a drop changes."""
    if not plan.experts:
        return []
    changes = []
    final = {}
    for layer, (count, _) in expert_layers(plan.groups.graph).items():
        drop = plan.experts.get(layer)
        final[layer] = count if drop is None else int(drop.keep.sum())
        if drop is not None:
            for path in (drop.layer, drop.router):
                changes += _counts(model.get_submodule(path), count, final[layer])
    config = getattr(model.get_submodule(next(iter(plan.experts))), "config", None)
    if config is not None and len(set(final.values())) == 1:
        old = len(next(iter(plan.experts.values())).keep)
        changes += _counts(config, old, next(iter(final.values())))
    return changes


__all__ = ["expert_count_changes"]
