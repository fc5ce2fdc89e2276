"""Building blocks shared by the channel rules."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from ...trace.refs import Ref
from ..context import FOLLOWER, RuleContext, TensorLabels


def norm_dim(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def as_dims(dim: Any, ndim: int) -> tuple[int, ...]:
    """``dim`` argument (int, sequence or None meaning all) as sorted non-negative dims."""
    if dim is None or (isinstance(dim, (tuple, list)) and len(dim) == 0):
        return tuple(range(ndim))
    if isinstance(dim, int):
        return (norm_dim(dim, ndim),)
    return tuple(sorted(norm_dim(d, ndim) for d in dim))


def merge_dim(ctx: RuleContext, entries: Sequence[tuple[np.ndarray | None, int]], size: int,
              what: str) -> np.ndarray | None:
    """Couple one output dimension of size ``size`` across the operands that span it.

    ``entries`` holds ``(labels or None, operand size)`` per operand. Operands of the full
    size are the same channels; a labelled operand broadcast from size 1 cannot be pruned;
    an unlabelled full-size operand has channels we cannot follow, so the labelled ones
    are blocked rather than risk a silent mismatch.
    """
    full = [lab for lab, n in entries if n == size and lab is not None]
    unlabelled = size > 1 and any(lab is None and n == size for lab, n in entries)
    for lab, n in entries:
        if lab is not None and n == 1 and size > 1:
            ctx.block(lab, f"one channel broadcast over {size} by {what}")
    if not full:
        return None
    for lab in full[1:]:
        ctx.union(lab, full[0])
    if unlabelled:
        ctx.block(full[0], f"combined by {what} with a tensor whose channels cannot be followed")
    return full[0]


def broadcast(ctx: RuleContext, refs: Iterable[Ref], out_shape: Sequence[int],
              trailing: int = 0, labels: Sequence[TensorLabels] | None = None,
              shapes: Sequence[Sequence[int]] | None = None) -> TensorLabels:
    """Elementwise broadcasting: operands aligned from the right share channels per dim.

    With ``trailing > 0`` only the leading (batch) dims are broadcast, as in ``matmul``;
    ``labels`` and ``shapes`` override the operands' own (for rules that substitute some,
    such as key/value heads repeated for grouped-query attention).
    """
    refs = list(refs)
    nd = len(out_shape)
    shapes = shapes if shapes is not None else [ctx.shape(r) for r in refs]
    labels = labels if labels is not None else [ctx.labels(r) for r in refs]
    out: TensorLabels = {}
    for d in range(nd - trailing):
        entries = []
        for shape, lab in zip(shapes, labels):
            sd = d - (nd - len(shape))
            if 0 <= sd < len(shape) - trailing:
                entries.append((lab.get(sd), shape[sd]))
        merged = merge_dim(ctx, entries, out_shape[d], f"'{ctx.op}'")
        if merged is not None:
            out[d] = merged
    return out


def keep_dims(labels: TensorLabels, mapping: dict[int, int]) -> TensorLabels:
    """Labels moved to new dims: ``mapping[old] = new``; dims not in ``mapping`` are dropped."""
    return {mapping[d]: lab for d, lab in labels.items() if d in mapping}


def block_dims(ctx: RuleContext, labels: TensorLabels, dims: Iterable[int], reason: str,
               shape: Sequence[int] | None = None) -> None:
    """Block labelled ``dims`` of size > 1 (size-1 dims have nothing to prune)."""
    for d in dims:
        lab = labels.get(d)
        if lab is not None and lab.size > 1:
            ctx.block(lab, reason)


def channel_labels(ctx: RuleContext, ref: Ref, dim: int) -> np.ndarray:
    """Labels of ``dim`` of ``ref``; blocked fresh labels when the dim carries none."""
    lab = ctx.labels(ref).get(dim)
    if lab is None:
        lab = fresh_blocked(ctx, ctx.shape(ref)[dim], "channels of unknown origin")
    return lab


def fresh_blocked(ctx: RuleContext, n: int, reason: str) -> np.ndarray:
    """``n`` new labels that cannot be pruned, e.g. outputs of a layer we cannot resize."""
    labels = ctx.space.new(n)
    ctx.block(labels, reason)
    return labels


def anchored_slice(ctx: RuleContext, lab: np.ndarray, start: int | None, stop: int | None,
                   reason: str) -> np.ndarray:
    """Labels of ``lab[start:stop]`` for constant bounds written in the model's code.

    The bounds stay the same after pruning. A non-negative bound counts from the front, so
    it still points at the same channel only if none before it is pruned: those are
    blocked. A negative bound counts from the back: the channels after it are blocked. The
    channels between the anchors keep their labels in the result, so the model's own slice
    picks exactly the survivors. Blocking a channel keeps its whole group, so this pays off
    where the dim spans several groups: after ``cat([a, b], 1)``, ``[:, len(a):]`` keeps
    ``a`` whole and ``b`` prunable, ``[:, :len(a)]`` keeps ``a`` whole and ``b`` prunable too.
    """
    n = len(lab)
    front, back = 0, n
    if start is not None:
        if start >= 0:
            front = min(start, n)
        elif n + start > 0:
            back = n + start
    if stop is not None:
        if 0 <= stop < n:
            front = max(front, stop)
        elif stop < 0:
            back = min(back, max(n + stop, 0))
    if n > 1:
        ctx.block(lab[:front], reason)
        ctx.block(lab[back:], reason)
    return lab[start:stop]


def follow_bias(ctx: RuleContext, bias: Any, labels: np.ndarray) -> None:
    """A layer's bias follows its output channels: a parameter as a follower; a tensor
    computed in ``forward()`` (``cat([q_bias, zeros, v_bias])``) shares its channels, as
    an add would; a bias whose channels cannot be followed keeps the outputs whole."""
    if bias is None or not isinstance(bias, Ref):
        return
    if ctx.is_param(bias):
        ctx.union(ctx.role(bias, 0, FOLLOWER), labels)
    else:
        merge_dim(ctx, [(ctx.labels(bias).get(0), ctx.shape(bias)[0]), (labels, len(labels))], len(labels),
                  f"the bias of '{ctx.op}'")


def block_union(ctx: RuleContext, labels: np.ndarray, blocks: int) -> np.ndarray:
    """Make each of ``blocks`` equal blocks of ``labels`` one channel; return block roots."""
    grid = labels.reshape(blocks, -1)
    ctx.union(grid, grid[:, :1])
    return grid[:, 0]


def position_union(ctx: RuleContext, labels: np.ndarray, blocks: int) -> np.ndarray:
    """Couple index ``j`` of every one of ``blocks`` equal blocks; return one block's labels."""
    grid = labels.reshape(blocks, -1)
    ctx.union(grid, grid[:1, :])
    return grid[0]


def passthrough(ctx: RuleContext) -> None:
    """Outputs shaped like argument 0 have its channels (shape-preserving unary ops)."""
    x = ctx.arg(0, "input")
    shape = ctx.shape(x)
    for i, out_shape in enumerate(ctx.out_shapes):
        if tuple(out_shape) == shape:
            ctx.set_out(ctx.labels(x), i)
