"""Which channels each group keeps: the recipe's sparsities applied to ranked channels."""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..groups import ChannelGroups
from .._progress import progress
from ..recipe.load import Recipe
from ..recipe.plan import kept_channels
from .importance import METRICS

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PruningPlan:
    """Kept group channels per group center; groups not listed keep everything."""

    groups: ChannelGroups
    kept: dict[str, np.ndarray]
    requested: dict[str, float]

    @functools.cached_property
    def members(self) -> dict[tuple[str, int], np.ndarray]:
        """Keep masks of every parameter dimension the plan shrinks, keyed ``(param, dim)``.

        A dimension may span several groups (a conv after a ``cat``): an index survives
        unless the group it belongs to drops its channel. Computed once: masking and
        shrinking both read it.
        """
        shapes = self.groups.graph.graph["params"]
        out: dict[tuple[str, int], np.ndarray] = {}
        for g in self.groups:
            kept = self.kept.get(g.center)
            if kept is None:
                continue
            for m in g.members:
                keep = out.setdefault((m.param, m.dim), np.ones(shapes[m.param][m.dim], dtype=bool))
                keep[m.index] &= np.isin(m.channels, kept)
        return {k: v for k, v in out.items() if not v.all()}

    def surviving(self, node: str, index: int = 0) -> dict[int, np.ndarray]:
        """For each labelled dim of a node's output: which positions survive the plan
        (a dim may span several groups; positions in no group always survive)."""
        out = {}
        for dim, (group_index, channel) in self.groups.channel_map(node, index).items():
            keep = np.ones(len(group_index), dtype=bool)
            for gi in np.unique(group_index[group_index >= 0]).tolist():
                kept = self.kept.get(self.groups.groups[gi].center)
                if kept is not None:
                    at = group_index == gi
                    keep[at] = np.isin(channel[at], kept)
            out[dim] = keep
        return out

    def restricted(self, centers) -> "PruningPlan":
        """The same plan pruning only the groups in ``centers``."""
        keep = set(centers)
        return PruningPlan(self.groups, {c: k for c, k in self.kept.items() if c in keep}, self.requested)


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return tensors


def make_plan(model: nn.Module, groups: ChannelGroups, recipe: Recipe,
              skip: Mapping[str, str] | None = None,
              tensors: Mapping[str, torch.Tensor] | None = None) -> PruningPlan:
    """Rank every prunable group's channels and keep the best ``kept_channels`` of them.

    ``skip`` maps group centers to a reason they must stay whole (layers we cannot resize).
    ``tensors`` are the weights to rank by, the model's own by default (a checkpoint read
    tensor by tensor when the model is on the meta device, see :mod:`pruneconf.stream`).
    Ties break by channel index, so the same weights and recipe always keep the same channels.
    A ``mode: global`` recipe ranks across groups instead (:mod:`.global_rank`).
    """
    if recipe.settings.mode == "global":
        from .global_rank import make_global_plan
        return make_global_plan(model, groups, recipe, skip, tensors)
    score = METRICS[recipe.settings.metric]
    tensors = model_tensors(model) if tensors is None else tensors
    kept, requested = {}, {}
    for g in progress(groups.prunable, "ranking channels"):
        sparsity = recipe.sparsity_of(g.center)
        requested[g.center] = sparsity
        if sparsity <= 0:
            continue
        if skip and g.center in skip:
            log.warning("group %s left whole: %s", g.center, skip[g.center])
            continue
        keep = kept_channels(g.channels, sparsity, recipe.settings.round_to)
        if keep >= g.channels:
            continue
        importance = score(g, tensors, recipe.settings.seed)
        order = np.argsort(-importance, kind="stable")
        kept[g.center] = np.sort(order[:keep])
    return PruningPlan(groups, kept, requested)


__all__ = ["PruningPlan", "make_plan", "model_tensors"]
