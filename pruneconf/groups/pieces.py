"""Pieces of a group that each keep their own share of its kept channels.

RAFT splits its context encoder's output into the recurrent unit's hidden state (96
channels in raft_small) and the context (64), sizes the model reads one by one (see
:mod:`.rules.sections`). Both pieces come from one conv, so they are one group, and ranked
as one the hidden channels, which feed every recurrent convolution, score higher: at 0.5
the hidden state kept 80 of 96 and the context 1 of 64, and the recurrent unit, most of the
model's MACs, lost far less than half. A rule that knows the pieces are sized apart says so
(:meth:`RuleContext.share`); here each piece becomes a *cell* of its group
(``Group.pieces``), and :func:`pruneconf.masks.keep.top_channels` keeps in every cell its
share of the group's count, at least one (the model's code may refuse an empty piece, as
RAFT's does), each cell ranked within itself.

Several splits on one group give the cells they agree on (channels in the same piece of
every split), so each piece of each split is a union of cells and none is emptied. A group
whose channels a channel shuffle routes, or that experts stacked in one tensor share, ranks
as those require (:mod:`.routes`, :mod:`.stacks`) and may empty a piece: the dry run then
sees the model break and leaves the group whole, naming the line.
"""
from __future__ import annotations

import numpy as np


def _piece_columns(shares: list[list[np.ndarray]], comp: np.ndarray, roots: np.ndarray,
                   channel_of_root: np.ndarray, widths: dict[int, int]) -> dict[int, list[np.ndarray]]:
    """Per group component: for each split that touches it, the piece of every channel
    (-1 for channels in none of its pieces)."""
    out: dict[int, list[np.ndarray]] = {}
    for pieces in shares:
        columns: dict[int, np.ndarray] = {}
        for i, labels in enumerate(pieces):
            hit = roots[labels]
            for c in np.unique(comp[hit]).tolist():
                if c not in widths:
                    continue
                column = columns.setdefault(c, np.full(widths[c], -1, dtype=np.int64))
                chans = channel_of_root[hit[comp[hit] == c]]
                column[chans[chans >= 0]] = i
        for c, column in columns.items():
            out.setdefault(c, []).append(column)
    return out


def piece_cells(shares: list[list[np.ndarray]], comp: np.ndarray, roots: np.ndarray,
                channel_of_root: np.ndarray, widths: dict[int, int]) -> dict[int, np.ndarray]:
    """The cell of each channel (``Group.pieces``) of every group component that the splits
    of ``shares`` cut into two cells or more; ``widths`` holds each group's channel count."""
    out = {}
    for c, columns in _piece_columns(shares, comp, roots, channel_of_root, widths).items():
        _, cells = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
        if cells.max() > 0:
            out[c] = cells.ravel()
    return out


__all__ = ["piece_cells"]
