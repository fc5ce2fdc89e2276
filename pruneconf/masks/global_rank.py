"""Global ranking (``mode: global``): remove the least important channels of the whole model.

``default_sparsity`` is then the fraction of all channels of the taking-part groups to remove;
each group loses what its channels' ranks say, between none and its ``max_sparsity``.
Importance scales differ between groups (a 3x3 conv with 512 inputs has larger norms than a
1x1 conv with 16), so each group's scores are divided by their mean over the group's channels
before ranking ("mean normalisation"): a channel competes by how it compares to its own
group's average. Per-group ``sparsity`` values are not used in this mode; ``exclude`` and
``max_sparsity`` (settings or per group, 0 takes a group out) are.
"""
from __future__ import annotations

import logging
from typing import Mapping

import numpy as np

from .._progress import progress
from ..groups import ChannelGroups, Group
from ..recipe.budget import taking_part
from ..recipe.load import Recipe
from .importance import METRICS, RankInputs
from .keep import group_keep, top_channels

log = logging.getLogger(__name__)


def normalised(scores: np.ndarray) -> np.ndarray:
    """``scores / mean(scores)``; all ones for a group whose scores are all zero."""
    mean = float(np.mean(scores)) if scores.size else 0.0
    return scores / mean if mean > 0 else np.ones_like(scores)


def global_kept(groups: list[Group], scores: Mapping[str, np.ndarray], fraction: float,
                floors: Mapping[str, int], round_to: int = 1) -> dict[str, np.ndarray]:
    """Kept channel indices per group after removing ``fraction`` of all channels by ``scores``.

    A group never drops below ``floors[center]`` channels; counts are then rounded to
    multiples of ``round_to`` (as ``kept_channels`` rounds), so the realised total can
    differ slightly from the request. Ties break by group order, then channel index.
    """
    total = sum(g.channels for g in groups)
    budget = int(np.floor(total * fraction + 1e-9))
    flat = np.concatenate([normalised(scores[g.center]) for g in groups]) if groups else np.zeros(0)
    owner = np.concatenate([np.full(g.channels, i) for i, g in enumerate(groups)]) if groups else np.zeros(0, int)
    channel = np.concatenate([np.arange(g.channels) for g in groups]) if groups else np.zeros(0, int)
    removable = np.array([g.channels - floors[g.center] for g in groups], dtype=np.int64)
    removed = np.zeros(len(groups), dtype=np.int64)
    left = budget
    for i in np.lexsort((channel, owner, flat)):
        if left == 0:
            break
        if removed[owner[i]] < removable[owner[i]]:
            removed[owner[i]] += 1
            left -= 1
    kept = {}
    for g, gone in zip(groups, removed):
        keep = max(floors[g.center], group_keep(g, gone / g.channels, round_to))
        if keep < g.channels:
            kept[g.center] = top_channels(g, scores[g.center], keep)
    return kept


def global_plan(groups: ChannelGroups, recipe: Recipe, inputs: RankInputs,
                skip: Mapping[str, str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Kept channels and requested sparsity per group for a ``mode: global`` recipe (see the
    module docstring), ranked by what ``inputs`` hold (:func:`~pruneconf.masks.plan.rank_inputs`)."""
    score = METRICS[recipe.settings.metric]
    skip = skip or {}
    for center, why in skip.items():
        log.warning("group %s left whole: %s", center, why)
    parts = taking_part(groups, recipe, skip)
    scores = {g.center: score(g, inputs) for g in progress(parts, "ranking channels")}
    floors = {g.center: group_keep(g, recipe.max_sparsity_of(g.center), recipe.settings.round_to)
              for g in parts}
    kept = global_kept(parts, scores, recipe.settings.default_sparsity, floors, recipe.settings.round_to)
    total = sum(g.channels for g in parts)
    gone = sum(g.channels - len(kept[g.center]) for g in parts if g.center in kept)
    log.info("global ranking: removed %d of %d channels (%.1f%%, requested %.1f%%)", gone, total,
             100 * gone / max(total, 1), 100 * recipe.settings.default_sparsity)
    requested = {g.center: recipe.sparsity_of(g.center) for g in groups.prunable}
    return kept, requested
