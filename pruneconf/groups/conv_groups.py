"""Grouped convolutions pruned inside their groups: every conv group keeps the same count.

A grouped conv's weight is one dense tensor ``[out, in / groups, *k]``: row ``j`` reads the
inputs of its own conv group only. The conv rule couples output channel ``i`` with input
channel ``i`` (:mod:`.rules.conv`); the shrunk conv keeps its ``groups``, so each conv group
must keep the same number of channels, and each row keeps the columns of its group's kept
inputs (:meth:`pruneconf.masks.plan.PruningPlan.members`). The equal counts are
``Group.blocks``, the mechanism that gives stacked experts equal widths (:mod:`.stacks`):
here a block is a conv group. ``round_to`` rounds the group's total, not each conv group's
count (``Group.rounds_total``): the activation between the layers is one tensor.

A channel group the conv groups cannot split into equal blocks (their channels spread over
several groups, part of a group outside the conv, a second grouped conv or stacked experts
cutting it into blocks of different sizes, channels pinned) has those convs prune whole
conv groups instead: :func:`~pruneconf.groups.find.find_groups` runs the rules again with
them in ``coupled``.

Where every block is exactly one conv group of every grouped conv in the group
(``Group.whole_conv_groups``: RegNet, ResNeXt), a recipe may also choose to drop whole conv
groups (``conv_groups: whole``): the conv then loses ``groups`` and keeps each group's full
width. That halves the conv's MACs where keeping half of every group quarters them, but a
narrow conv group (RegNet's 24) can be slow per MAC at half its width; a latency table
measures both and the latency planner picks per group.
"""
from __future__ import annotations

from typing import Mapping, Protocol

import numpy as np


class Group(Protocol):
    """What this module reads and sets of a :class:`~pruneconf.groups.find.Group`."""

    channels: int
    blocks: np.ndarray | None
    pinned: np.ndarray
    rounds_total: bool
    whole_conv_groups: bool


def conv_group_blocks(grouped: Mapping[str, tuple[str, int, np.ndarray]], by_comp: Mapping[int, Group],
                      comp: np.ndarray, roots: np.ndarray, channel_of_root: np.ndarray) -> frozenset[str]:
    """Set ``blocks`` of every group a grouped conv prunes inside its groups; return the conv
    nodes that must prune whole conv groups instead."""
    columns: dict[int, list[tuple[str, np.ndarray, np.ndarray]]] = {}  # comp -> (node, channels, conv group)
    refused: set[str] = set()
    for node, (_, groups, labels) in grouped.items():
        hit = roots[labels]
        c = int(comp[hit[0]])
        channels = channel_of_root[hit]
        if not (comp[hit] == c).all() or (channels < 0).any() or len(np.unique(channels)) < len(channels):
            refused.add(node)  # channels of several groups, some no layer produces, or coupled ones
        elif c in by_comp:
            conv_group = np.arange(len(labels)) // (len(labels) // groups)
            columns.setdefault(c, []).append((node, channels, conv_group))
    for c, convs in columns.items():
        group = by_comp[c]
        blocks = _equal_blocks(group, convs)
        if blocks is None:
            refused.update(node for node, _, _ in convs)
        else:
            group.rounds_total = group.blocks is None  # with stacked experts: per expert
            group.whole_conv_groups = group.rounds_total and all(
                _same_partition(blocks, channels, conv_group) for _, channels, conv_group in convs)
            group.blocks = blocks
    return frozenset(refused)


def _equal_blocks(group: Group, convs: list[tuple[str, np.ndarray, np.ndarray]]) -> np.ndarray | None:
    """The block of each channel of ``group`` such that every conv group (and every stacked
    expert) keeps the same count when every block does; None when the blocks differ in size."""
    if group.pinned.size:
        return None  # a pinned channel would take one block's share
    keys = [np.zeros(group.channels, np.int64) if group.blocks is None else group.blocks]
    for _, channels, conv_group in convs:
        key = np.full(group.channels, -1, dtype=np.int64)
        key[channels] = conv_group
        keys.append(key)
    _, blocks = np.unique(np.stack(keys, axis=1), axis=0, return_inverse=True)
    blocks = blocks.reshape(-1)
    sizes = np.bincount(blocks)
    return blocks if (sizes == sizes[0]).all() else None


def _same_partition(blocks: np.ndarray, channels: np.ndarray, conv_group: np.ndarray) -> bool:
    """Whether one conv covers every channel of the group and its conv groups are the blocks:
    then dropping a block drops whole conv groups of this conv and nothing else."""
    if len(channels) != len(blocks):
        return False
    pairs = np.unique(np.stack([blocks[channels], conv_group], axis=1), axis=0)
    return len(pairs) == len(np.unique(conv_group)) == int(blocks.max()) + 1


__all__ = ["conv_group_blocks"]
