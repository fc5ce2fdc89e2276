"""Layout ops: reshape, permute, squeeze, expand, repeat and pixel shuffles.

A reshape that merges a channel dim with others (flatten before a Linear) repeats each
channel label over the merged block. One that splits a channel dim into several (heads,
a shuffle's view not followed by its transpose and view back) keeps one of them as the
carrier of prunable channels: the dim given as ``-1``, else the innermost, which is the one
model code computes from the channel count (``C // heads``, ``C // groups``). Positions
along the other split dims are coupled, so every block loses the same channels and the
model's own reshape still works afterwards.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..context import WHOLE_HEADS, RuleContext, TensorLabels
from ..registry import register, unsupported
from .common import as_dims, block_dims, block_union, fresh_blocked, keep_dims, norm_dim, position_union
from .shuffle import follow_shuffle_view
from .read_sizes import couple_read_sizes
from .merged_heads import whole_heads_merge


def _size_args(args: Sequence[Any]) -> tuple:
    """``view(2, 3)`` and ``view((2, 3))`` alike."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def reshape_groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of ``src`` dims with runs of ``dst`` dims that hold the same elements."""
    if 0 in src or 0 in dst:
        return None
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi.append(i)
            pi *= src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj *= dst[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif pj < pi and j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def _carrier(grid: np.ndarray, dims: list[int], inferred: int | None, whole_blocks: bool, outer: bool = False) -> int:
    """Which of the split dims keeps the prunable channels (index into ``dims``).

    With ``whole_blocks`` it is the dim outside the innermost (the heads of
    ``(3, heads, head_dim)``): each block becomes one channel. With ``outer`` it is the
    outermost (the input channels of ``(I, kh, kw)``, a conv weight's columns).
    """
    sized = [k for k, n in enumerate(grid.shape) if n > 1]
    if outer and sized:
        return sized[0]
    if whole_blocks and len(sized) > 1:  # the heads, even a single one, never the 3 of (3, 1, head_dim)
        return grid.ndim - 2 if sized[-1] == grid.ndim - 1 else sized[-2]
    if inferred is not None and inferred in dims:
        return dims.index(inferred)
    return sized[-1] if sized else len(dims) - 1


def _separable_axis(grid: np.ndarray) -> int | None:
    """The one axis along which ``grid`` varies (the largest if it varies along none), or
    None when it varies along several."""
    varying = [a for a in range(grid.ndim) if grid.shape[a] > 1
               and not (grid == np.take(grid, [0], axis=a)).all()]
    if not varying:
        return int(np.argmax(grid.shape))
    return varying[0] if len(varying) == 1 else None


def _carried(ctx: RuleContext, labels: TensorLabels, dims: list[int]) -> list[int]:
    """The dims whose channels a merge must carry. Dims already blocked are positions that
    merely picked up labels (Swin's window tokens, from the shift mask its attention adds):
    fixed in size, they need no labels, so a merge with one free channel dim
    (``PatchMerging``'s ``(2, 2, C) -> 4C``) repeats that dim's channels over them."""
    if len(dims) < 2:
        return dims
    free = [d for d in dims if not ctx.space.blocked_directly(labels[d])]
    return free if len(free) == 1 else dims


def relabel_reshape(ctx: RuleContext, labels: TensorLabels, src: Sequence[int],
                    dst: Sequence[int], inferred: int | None = None) -> TensorLabels:
    """Labels of a tensor of shape ``src`` reshaped to ``dst``."""
    groups = reshape_groups(src, dst)
    if groups is None:
        ctx.block_tensor(labels, f"reshape by '{ctx.op}' we cannot follow")
        return ctx.blocked_labels(dst, f"reshape by '{ctx.op}' at '{ctx.node}'")
    out: TensorLabels = {}
    for gi, gj in groups:
        labelled = [d for d in gi if d in labels and src[d] > 1]
        if not labelled:
            continue
        if len(gi) == 1 and len(gj) == 1:
            out[gj[0]] = labels[gi[0]]
            continue
        labelled = _carried(ctx, labels, labelled)
        if len(labelled) > 1:
            heads = whole_heads_merge(ctx, labels, labelled)
            if heads is None:
                for d in labelled:
                    ctx.block(labels[d], f"several channel dims merged by '{ctx.op}'")
                for d in gj:
                    out[d] = fresh_blocked(ctx, dst[d], f"several channel dims merged by '{ctx.op}'")
                continue
            labelled = [heads]
        d = labelled[0]
        sizes = [src[k] for k in gi]
        view = [1] * len(gi)
        view[gi.index(d)] = -1
        grid = np.broadcast_to(labels[d].reshape(view), sizes).reshape([dst[k] for k in gj])
        axis = _separable_axis(grid)
        if axis is None:  # a genuine split: keep one carrier dim, couple the others
            axis = _carrier(grid, gj, inferred, ctx.node in ctx.whole_blocks, ctx.node in ctx.outer_splits)
            moved = np.moveaxis(grid, axis, -1).reshape(-1, grid.shape[axis])
            out[gj[axis]] = position_union(ctx, moved.ravel(), moved.shape[0])
            ctx.splits.setdefault(int(out[gj[axis]][0]), []).append(ctx.node)
            if ctx.node in ctx.whole_blocks:
                ctx.note(out[gj[axis]], WHOLE_HEADS)
        else:
            out[gj[axis]] = grid[tuple(slice(None) if a == axis else 0 for a in range(grid.ndim))].copy()
    return out


@register("view", "reshape", "view_as", "reshape_as", "flatten", "unflatten", "ravel")
def reshape(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    src, dst = ctx.shape(x), tuple(ctx.out_shapes[0])
    inferred = None
    if ctx.op in ("view", "reshape"):
        sizes = _size_args(ctx.args[1:] or (ctx.attrs["kwargs"].get("shape", ()),))
        if -1 in sizes:
            inferred = sizes.index(-1)
    elif ctx.op == "unflatten":
        dim = norm_dim(ctx.arg(1, "dim"), len(src))
        sizes = tuple(ctx.arg(2, "sizes"))
        if -1 in sizes:
            inferred = dim + sizes.index(-1)
    if follow_shuffle_view(ctx, ctx.labels(x), src, dst):
        return
    out = relabel_reshape(ctx, ctx.labels(x), src, dst, inferred)
    couple_read_sizes(ctx, out)
    ctx.set_out(out)


@register("permute")
def permute(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    order = _size_args(ctx.args[1:] or (ctx.attrs["kwargs"].get("dims", ()),))
    ctx.set_out(keep_dims(ctx.labels(x), {norm_dim(src, nd): dst for dst, src in enumerate(order)}))


def _moved(nd: int, source: Any, destination: Any) -> list[int]:
    """``order[new] = old`` for ``movedim(source, destination)``."""
    src = [norm_dim(d, nd) for d in ((source,) if isinstance(source, int) else source)]
    dst = [norm_dim(d, nd) for d in ((destination,) if isinstance(destination, int) else destination)]
    order: list[int | None] = [None] * nd
    for s_, d_ in zip(src, dst):
        order[d_] = s_
    rest = iter(d for d in range(nd) if d not in src)
    return [o if o is not None else next(rest) for o in order]


@register("transpose", "t", "T", "mT", "movedim", "adjoint", "mH", "H")
def transpose(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    order = list(range(nd))
    if ctx.op == "transpose":
        a, b = norm_dim(ctx.arg(1, "dim0"), nd), norm_dim(ctx.arg(2, "dim1"), nd)
        order[a], order[b] = order[b], order[a]
    elif ctx.op in ("t", "T", "H"):
        order = order[::-1]
    elif ctx.op == "movedim":
        order = _moved(nd, ctx.arg(1, "source"), ctx.arg(2, "destination"))
    else:  # mT, mH, adjoint: swap the last two dims
        order[-1], order[-2] = order[-2], order[-1]
    ctx.set_out(keep_dims(ctx.labels(x), {src: dst for dst, src in enumerate(order)}))


@register("squeeze", "unsqueeze")
def squeeze(ctx: RuleContext) -> None:
    """Only size-1 dims come or go; a size-1 dim has nothing to prune."""
    x = ctx.arg(0, "input")
    src, dst = ctx.shape(x), ctx.out_shapes[0]
    labels = ctx.labels(x)
    kept = [d for d in range(len(src)) if src[d] > 1]
    targets = [d for d in range(len(dst)) if dst[d] > 1]
    ctx.set_out(keep_dims(labels, dict(zip(kept, targets))))


@register("expand", "expand_as", "broadcast_to")
def expand(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    src, dst = ctx.shape(x), ctx.out_shapes[0]
    labels = ctx.labels(x)
    lead = len(dst) - len(src)
    block_dims(ctx, labels, [d for d in range(len(src)) if src[d] == 1 and dst[d + lead] > 1],
               f"one channel broadcast by '{ctx.op}'")
    ctx.set_out({d + lead: lab for d, lab in labels.items() if src[d] == dst[d + lead]})


@register("repeat", "tile")
def repeat(ctx: RuleContext) -> None:
    """Repeating along a channel dim tiles its labels: pruned copies stay consistent."""
    x = ctx.arg(0, "input")
    src, dst = ctx.shape(x), ctx.out_shapes[0]
    lead = len(dst) - len(src)
    out = {}
    for d, lab in ctx.labels(x).items():
        reps = dst[d + lead] // max(src[d], 1)
        out[d + lead] = np.tile(lab, reps)
    ctx.set_out(out)


@register("repeat_interleave")
def repeat_interleave(ctx: RuleContext) -> None:
    x, repeats, dim = ctx.arg(0, "input"), ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    labels = ctx.labels(x)
    if not isinstance(repeats, int) or dim is None:
        return unsupported(ctx)
    dim = norm_dim(dim, len(ctx.shape(x)))
    out = dict(labels)
    if dim in out:
        out[dim] = np.repeat(out[dim], repeats)
    ctx.set_out(out)


@register("flip", "fliplr", "flipud")
def flip(ctx: RuleContext) -> None:
    """Reversing a channel dim reverses its labels; the pruned tensor reverses the same way."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    dims = {"fliplr": (1,), "flipud": (0,)}.get(ctx.op) or as_dims(_size_args(ctx.args[1:]) or ctx.arg(1, "dims"), nd)
    out = {d: (lab[::-1].copy() if d in dims else lab) for d, lab in ctx.labels(x).items()}
    ctx.set_out(out)


@register("roll")
def roll(ctx: RuleContext) -> None:
    """A roll by a constant shift moves channels by position: not prunable along it."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    dims = ctx.arg(2, "dims")
    rolled = tuple(range(nd)) if dims is None else as_dims(dims, nd)
    labels = ctx.labels(x)
    block_dims(ctx, labels, rolled, "channels shifted by 'roll'")
    ctx.set_out(labels)


def _resampled(ctx: RuleContext) -> tuple[dict, np.ndarray | None, int]:
    """Pixel (un)shuffle: spatial dims are mixed; return leading labels and the channel dim."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    labels = ctx.labels(x)
    block_dims(ctx, labels, (nd - 2, nd - 1), f"channels resampled by '{ctx.op}'")
    return {d: lab for d, lab in labels.items() if d < nd - 3}, labels.get(nd - 3), nd - 3


@register("pixel_shuffle")
def pixel_shuffle(ctx: RuleContext) -> None:
    """``[C*r*r, H, W] -> [C, rH, rW]``: the r*r sub-channels of a channel go together."""
    out, channels, cd = _resampled(ctx)
    if channels is not None:
        out[cd] = block_union(ctx, channels, ctx.out_shapes[0][cd])
    ctx.set_out(out)


@register("pixel_unshuffle")
def pixel_unshuffle(ctx: RuleContext) -> None:
    """``[C, rH, rW] -> [C*r*r, H, W]``: each channel becomes r*r copies of its label."""
    out, channels, cd = _resampled(ctx)
    if channels is not None:
        out[cd] = np.repeat(channels, ctx.out_shapes[0][cd] // len(channels))
    ctx.set_out(out)
