"""A reshape given a width the model's code read from another tensor's shape.

``B, N, C = x.shape`` … ``(attn @ v).transpose(1, 2).reshape(B, N, C)`` (timm's EVA,
CaiT, XCiT, PVT-v2 attention; ``self.sr(x).reshape(B, C, -1)`` in PVT-v2): after pruning
the code reads ``x``'s new width and the reshaped tensor must have exactly as many
channels. The trace matched the size to that read (:mod:`pruneconf.trace.sizes`); this
couples channel ``i`` of the reshaped dim with channel ``i`` of the dim read, so both keep
the same count whatever the group keeps. Heads kept whole (q·k) then make the residual
stream lose whole head-sized blocks with them. A size the line passes from a module
attribute (``self.attn_dim``) was never matched: :mod:`pruneconf.apply.attributes`
updates the attribute instead.
"""
from __future__ import annotations

from ..context import RuleContext, TensorLabels


def couple_read_sizes(ctx: RuleContext, out: TensorLabels) -> None:
    """Tie each dim of the reshape's output ``out`` whose size was read from a shape to
    the dim it was read from (one-to-one by position)."""
    for dim, sources in ctx.attrs.get("sized_by", {}).items():
        lab = out.get(dim)
        if lab is None or lab.size < 2:
            continue
        for ref, read_dim in sources:
            read = ctx.labels(ref).get(read_dim)
            if read is not None and read.size == lab.size:
                ctx.union(lab, read)


__all__ = ["couple_read_sizes"]
