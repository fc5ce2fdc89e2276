"""Channel labels: integer ids for channels, unions between them and blocked ones.

Every channel of every parameter dimension and tensor dimension that rules care about gets
an integer label. Rules never decide groups themselves; they only say "these channels are
the same channel" (:meth:`LabelSpace.union`) or "these channels must not be pruned, because
…" (:meth:`LabelSpace.block`). Unions are collected as arrays and solved once at the end with
a vectorised connected-components pass, which keeps analysis near the cost of one forward
pass even on graphs with hundreds of thousands of channels.
"""
from __future__ import annotations

import numpy as np


class LabelSpace:
    """Allocates labels, records unions and blocks, and solves them into classes."""

    def __init__(self) -> None:
        self.size = 0
        self._left: list[np.ndarray] = []
        self._right: list[np.ndarray] = []
        self.blocks: list[tuple[np.ndarray, str]] = []
        self.roots: np.ndarray | None = None
        self._blocked = np.zeros(0, dtype=bool)  # labels blocked directly, as of ``_seen`` blocks
        self._seen = 0

    def new(self, n: int) -> np.ndarray:
        """``n`` fresh labels."""
        labels = np.arange(self.size, self.size + n, dtype=np.int64)
        self.size += n
        return labels

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Declare ``a[i]`` and ``b[i]`` the same channel (``b`` may broadcast)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:  # broadcast_arrays costs more than the rest of a union
            a, b = np.broadcast_arrays(a, b)
        if a.size:
            self._left.append(a.ravel())
            self._right.append(b.ravel())

    def block(self, labels: np.ndarray, reason: str) -> None:
        """Mark ``labels`` (and all channels they are coupled with) as not prunable."""
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if labels.size:
            self.blocks.append((labels, reason))

    def blocked_directly(self, labels: np.ndarray) -> bool:
        """Whether every one of ``labels`` was itself blocked so far. Unions are not solved
        yet, so a label blocked through a coupled one does not count: the answer is a hint
        for rules that choose between readings (a merged dim's carrier), never a verdict."""
        if len(self._blocked) < self.size:
            self._blocked = np.concatenate([self._blocked, np.zeros(self.size - len(self._blocked), bool)])
        for blocked, _ in self.blocks[self._seen:]:
            self._blocked[blocked] = True
        self._seen = len(self.blocks)
        labels = np.asarray(labels, dtype=np.int64).ravel()
        return bool(labels.size) and bool(self._blocked[labels].all())

    def solve(self) -> np.ndarray:
        """Return ``roots`` with ``roots[label]`` the smallest label of its class."""
        self.roots = connected_roots(
            self.size,
            np.concatenate(self._left) if self._left else np.empty(0, np.int64),
            np.concatenate(self._right) if self._right else np.empty(0, np.int64))
        return self.roots


def connected_roots(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on ``n`` nodes, as min-label roots.

    Label propagation with pointer jumping: each round hooks both ends of every edge to
    the smaller of their current roots, then compresses paths. It converges in a few
    rounds on the graphs pruning produces and is all numpy, no Python loop per edge.
    """
    parent = np.arange(n, dtype=np.int64)
    if left.size == 0:
        return parent
    while True:
        lo = np.minimum(parent[left], parent[right])
        np.minimum.at(parent, parent[left], lo)
        np.minimum.at(parent, parent[right], lo)
        np.minimum.at(parent, left, lo)
        np.minimum.at(parent, right, lo)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent[left], parent[right]):
            return parent
