"""``chunk(n)`` whose last piece is shorter: EdgeNeXt splits 88 channels into 30, 30, 28.

``chunk`` computes its piece size at run time, ``ceil(C / n)``, and gives the last piece
what is left. Coupling position ``p`` of every piece where all pieces have one, and of the
equal pieces beyond the last piece's end, keeps that arithmetic true after pruning: with
``a`` common and ``e`` extra positions kept, ``C' = (n - 1)(a + e) + a`` and, as ``e`` stays
below ``n``, ``ceil(C' / n) = a + e``, so the model's own ``chunk`` cuts the kept channels
into the same pieces (while ``a > 0``; a plan that keeps none is caught by the dry run).
"""
from __future__ import annotations

import numpy as np

from ..context import RuleContext


def uneven_chunk(ctx: RuleContext, labels: np.ndarray, sizes: list[int]) -> list[np.ndarray] | None:
    """The labels of each piece of a ``chunk`` whose pieces are equal but for a shorter last
    one, after coupling them as the module docstring says; None for any other split."""
    size, last = sizes[0], sizes[-1]
    if ctx.op != "chunk" or len(sizes) < 2 or set(sizes[:-1]) != {size} or not 0 < last < size:
        return None
    equal = labels[:size * (len(sizes) - 1)].reshape(len(sizes) - 1, size)
    ctx.union(equal, equal[:1])
    ctx.union(labels[-last:], equal[0, :last])
    return [equal[0]] * (len(sizes) - 1) + [equal[0, :last]]
