"""How many and which channels a group keeps: shared by per-group and global ranking."""
from __future__ import annotations

import math

import numpy as np

from ..groups import Group
from ..recipe.plan import kept_blocks, kept_channels


def top_channels(group: Group, importance: np.ndarray, keep: int, whole: bool = False) -> np.ndarray:
    """The ``keep`` most important channels of ``group``, sorted; ties go to lower indices.

    Pinned channels (constants the model's code adds, see ``Group.pinned``) always come
    first. Experts stacked in one tensor keep ``keep / experts`` channels each, each expert
    its own best (see :mod:`pruneconf.groups.stacks`); so do the groups of a grouped conv
    (:mod:`pruneconf.groups.conv_groups`). Channels a shuffle moves keep as many
    of each path through the shrunk model as it sends down it (:mod:`pruneconf.groups.routes`).
    Pieces of a split sized one by one keep their own share each (:func:`share_of_each_piece`).
    ``whole`` keeps the best whole blocks instead (``conv_groups: whole``, :func:`best_blocks`).
    """
    importance = np.asarray(importance, dtype=np.float64).copy()
    if whole:
        return best_blocks(group, importance, keep)
    if group.routing is not None:
        return group.routing.choose(importance, keep)
    importance[group.pinned] = np.inf
    if group.pieces is not None and group.blocks is None:
        return share_of_each_piece(group, importance, keep)
    if group.blocks is None:
        return np.sort(np.argsort(-importance, kind="stable")[:keep])
    return _best_of_each_block(group.blocks, group.experts, importance, max(1, round(keep / group.experts)))


def _best_of_each_block(blocks: np.ndarray, count: int, importance: np.ndarray, per: int) -> np.ndarray:
    """The ``per`` most important channels of each of blocks ``0 .. count-1``, sorted; ties go
    to lower indices. One stable sort by block, then importance (a mask per block was
    quadratic: RegNet's convs have 50-100 groups)."""
    order = np.lexsort((-importance, blocks))
    sorted_blocks = blocks[order]
    starts = np.flatnonzero(np.r_[True, sorted_blocks[1:] != sorted_blocks[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    chosen = order[(rank < per) & (sorted_blocks >= 0) & (sorted_blocks < count)]
    return np.sort(chosen)


def best_blocks(group: Group, importance: np.ndarray, keep: int) -> np.ndarray:
    """The channels of the ``keep / block size`` blocks (conv groups) with the largest summed
    importance, sorted; ties go to lower blocks. A block's channels go or stay together, so
    its total, not its best channel, is what the model loses with it."""
    if not group.whole_conv_groups:
        raise ValueError(f"group {group.center} cannot lose whole conv groups")
    totals = np.bincount(group.blocks, weights=importance, minlength=group.experts)
    chosen = np.argsort(-totals, kind="stable")[:keep // group.block_width]
    return np.flatnonzero(np.isin(group.blocks, chosen))


def share_of_each_piece(group: Group, importance: np.ndarray, keep: int) -> np.ndarray:
    """The best channels of every cell of ``group.pieces``, sorted: ``keep / channels`` of
    each cell, rounded half up, at least one (model code may refuse an empty piece) and at
    least its pinned channels. The total may differ from ``keep`` by the rounding, and a
    cell's count is not rounded to ``round_to``: each piece is its own size in the model."""
    share = keep / group.channels
    chosen = []
    for cell in range(int(group.pieces.max()) + 1):
        members = np.flatnonzero(group.pieces == cell)
        pinned = int(np.isin(members, group.pinned).sum())
        count = max(1, pinned, int(np.floor(share * len(members) + 0.5)))
        chosen.append(members[np.argsort(-importance[members], kind="stable")[:count]])
    return np.sort(np.concatenate(chosen))


def group_keep(group: Group, sparsity: float, round_to: int, whole: bool = False) -> int:
    """Channels ``group`` keeps at ``sparsity``: per expert for stacked experts, so that
    every expert keeps the same count; the sparsity applies to the channels not pinned,
    which are all kept. A grouped conv's groups also keep the same count, but ``round_to``
    rounds their total (``Group.rounds_total``): each keeps a multiple of what makes it so.
    ``whole``: the sparsity of whole conv groups (:func:`~pruneconf.recipe.plan.kept_blocks`)."""
    if whole:
        return kept_blocks(group.experts, group.block_width, sparsity, round_to)
    pinned = len(group.pinned)
    if group.rounds_total:
        round_to //= math.gcd(round_to, group.experts)
    per = kept_channels((group.channels - pinned) // group.experts, sparsity, round_to)
    return per * group.experts + pinned


__all__ = ["best_blocks", "group_keep", "share_of_each_piece", "top_channels"]
