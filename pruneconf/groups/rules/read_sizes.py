"""A reshape given a width the model's code read from another tensor's shape.

``B, N, C = x.shape`` … ``(attn @ v).transpose(1, 2).reshape(B, N, C)`` (timm's EVA,
CaiT, XCiT, PVT-v2 attention; ``self.sr(x).reshape(B, C, -1)`` in PVT-v2): after pruning
the code reads ``x``'s new width and the reshaped tensor must have exactly as many
channels. The trace matched the size to that read (:mod:`pruneconf.trace.sizes`); this
couples the channels of the reshaped dim one-to-one with the channels of the dim read, so
both keep the same count whatever the group keeps. Heads kept whole (q·k) then make the residual
stream lose whole head-sized blocks with them. A size equal to a module attribute the
calling function reads (``self.attn_dim``) was never matched: :mod:`pruneconf.apply.attributes`
updates the attribute instead.
"""
from __future__ import annotations

import numpy as np

from ..context import SIZE_READ, RuleContext, TensorLabels


def couple_read_sizes(ctx: RuleContext, out: TensorLabels) -> None:
    """Tie each dim of the reshape's output ``out`` whose size was read from a shape to
    the dim it was read from, one to one. When the size matches the widths of several
    tensors the call read with different channels (a cross-attention's own and its
    context's), which one the code used is unknown, so none is tied."""
    for dim, sources in ctx.attrs.get("sized_by", {}).items():
        lab = out.get(dim)
        if lab is None or lab.size < 2:
            continue
        reads = [lab2 for ref, d in sources if (lab2 := ctx.labels(ref).get(d)) is not None and lab2.size == lab.size]
        if reads and all(np.array_equal(r, reads[0]) for r in reads[1:]):
            ctx.union(_interleaved(lab), reads[0])
            ctx.note(reads[0], SIZE_READ)


def _interleaved(lab: np.ndarray) -> np.ndarray:
    """``lab`` in the order its channels pair with the width read: when it is ``R`` equal
    runs of one label each (whole heads), the ``j``-th channel of run ``r`` pairs with
    channel ``j * R + r``. Any one-to-one pairing keeps the counts equal; spreading each
    head over the stream keeps the stream's own block structure (``chunk`` halves, conv
    groups) from merging heads: ``chunk(2)`` of a 48-channel stream with 4 heads of 12
    would otherwise tie heads 0 and 2, and 1 and 3, leaving two prunable units of four."""
    starts = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]])
    runs, n = starts.size, lab.size
    if runs in (1, n) or n % runs or not (np.diff(np.r_[starts, n]) == n // runs).all():
        return lab
    return lab.reshape(runs, n // runs).T.ravel()


__all__ = ["couple_read_sizes"]
