"""Indexing, concatenation and splitting along dims.

Model code writes slice bounds and split sizes as constants (``x[:, :32]``,
``torch.split(x, [16, 48], 1)``) that stay the same after pruning. A constant slice bound
counts from the front (or, when negative, from the back), so the channels between it and
that end are blocked: a slice then still cuts the same channels, and the channels beyond
its anchors stay prunable (``x[:, 8:]`` prunes freely after channel 8). Steps other than 1
block the dim. Constant split sizes must add up to the dim, so they block it. ``chunk`` is
computed from the tensor's size at run time: its pieces are coupled position by position,
so they shrink alike and the model's own ``chunk`` call still splits them correctly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...trace.refs import Ref
from ..context import RuleContext, TensorLabels
from ..registry import register, unsupported
from .common import anchored_slice, fresh_blocked, keep_dims, merge_dim, norm_dim, position_union

PARTIAL = "channels selected by constant indices in '{op}'"


def _whole(index: Any, size: int) -> bool:
    """Whether ``index`` keeps the whole dim of ``size`` (a full slice, or 0 of a size-1 dim)."""
    if isinstance(index, int):
        return size == 1
    return (index.start in (None, 0)
            and (index.stop is None or (isinstance(index.stop, int) and index.stop >= size))
            and index.step in (None, 1))


def index_plan(shape: tuple[int, ...], index: Any) -> list[tuple[int, int | None, Any]] | None:
    """For basic indexing: ``(in_dim, out_dim or None, index along in_dim)`` per input dim.

    The index is an int (the dim goes away) or a slice. Returns ``None`` for advanced
    indexing (tensor or list indices), which the caller treats as unsupported.
    """
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (Ref, list)) or isinstance(i, bool) for i in items):
        return None
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (len(shape) - consumed))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (len(shape) - sum(1 for i in expanded if i is not None)))
    plan, d, o = [], 0, 0
    for i in expanded:
        if i is None:
            o += 1
        elif isinstance(i, int):
            plan.append((d, None, i))
            d += 1
        else:
            plan.append((d, o, i))
            d += 1
            o += 1
    return plan


def _bounds(index: Any) -> tuple[Any, Any, Any]:
    """``(start, stop, step)`` of a slice, or of the one-element slice an int selects."""
    if isinstance(index, int):
        return index, (index + 1 if index != -1 else None), 1
    return index.start, index.stop, index.step


def _select(ctx: RuleContext, labels: TensorLabels, plan, out_shape) -> TensorLabels:
    """Labels of ``x[index]``; constant bounds on a channel dim block what they anchor."""
    out: TensorLabels = {}
    reason = PARTIAL.format(op=ctx.op)
    for d, o, index in plan:
        lab = labels.get(d)
        if lab is None:
            continue
        if _whole(index, len(lab)):
            kept = lab
        else:
            start, stop, step = _bounds(index)
            if step in (None, 1) and all(b is None or type(b) is int for b in (start, stop)):
                kept = anchored_slice(ctx, lab, start, stop, reason)
            else:
                if lab.size > 1:
                    ctx.block(lab, f"channels taken with a step or computed bounds in '{ctx.op}'")
                kept = fresh_blocked(ctx, out_shape[o], reason) if o is not None else None
        if o is not None:
            out[o] = kept
    return out


def _gathered(ctx: RuleContext, x: Ref, index: Any) -> TensorLabels | None:
    """Labels of ``x[..., idx, ...]`` with one integer index tensor and whole dims elsewhere
    (a relative-position table indexed by a buffer), or None for other advanced indexing.

    The indexed dim's positions are gathered by constant indices (a channel dim there is
    blocked); the index's own dims carry no channels; the other dims keep theirs.
    """
    items = index if isinstance(index, tuple) else (index,)
    shape = ctx.shape(x)
    refs = [k for k, i in enumerate(items) if isinstance(i, Ref)]
    if len(refs) != 1 or "int" not in ctx.graph.nodes[items[refs[0]].node]["out_dtypes"][items[refs[0]].index]:
        return None
    d = refs[0]
    if any(not _whole(i, shape[k]) for k, i in enumerate(items) if k != d):
        return None
    labels, grown = ctx.labels(x), len(ctx.shape(items[d])) - 1
    if (lab := labels.get(d)) is not None and lab.size > 1:
        ctx.block(lab, PARTIAL.format(op=ctx.op))
    return {(k if k < d else k + grown): lab for k, lab in labels.items() if k != d}


@register("getitem")
def getitem(ctx: RuleContext) -> None:
    x, index = ctx.args[0], ctx.args[1]
    plan = index_plan(ctx.shape(x), index)
    if plan is None:
        gathered = _gathered(ctx, x, index)
        return unsupported(ctx) if gathered is None else ctx.set_out(gathered)
    ctx.set_out(_select(ctx, ctx.labels(x), plan, ctx.out_shapes[0]))


def _written_region(ctx: RuleContext, x: Ref, index: Any) -> tuple[TensorLabels, list[int]] | None:
    """Labels and shape of the region ``x[index]`` that a ``setitem`` writes, or None."""
    labels, shape = ctx.labels(x), ctx.shape(x)
    plan = index_plan(shape, index)
    if plan is None:  # rows picked by one index tensor (``result[idx_in_level] = level``)
        gathered = _gathered(ctx, x, index)
        if gathered is None:
            return None
        items = index if isinstance(index, tuple) else (index,)
        d = next(k for k, i in enumerate(items) if isinstance(i, Ref))
        return gathered, [*shape[:d], *ctx.shape(items[d]), *shape[d + 1:]]
    region_shape = [1] * (1 + max((o for _, o, _ in plan if o is not None), default=-1))
    for d, o, item in plan:
        if o is not None:
            region_shape[o] = len(range(shape[d])[item])
    return _select(ctx, labels, plan, region_shape), region_shape


@register("setitem")
def setitem(ctx: RuleContext) -> None:
    """``x[index] = value``: the written region shares channels with ``value``."""
    x, index, value = ctx.args[0], ctx.args[1], ctx.args[2]
    labels = ctx.labels(x)
    written = _written_region(ctx, x, index)
    if written is None:
        return unsupported(ctx)
    region, region_shape = written
    if isinstance(value, Ref):
        vshape, vlab = ctx.shape(value), ctx.labels(value)
        for o, n in enumerate(region_shape):
            sd = o - (len(region_shape) - len(vshape))
            if 0 <= sd and sd in vlab:
                merge_dim(ctx, [(region.get(o), n), (vlab[sd], vshape[sd])], n, "'setitem'")
    ctx.set_out(labels)


@register("cat")
def cat(ctx: RuleContext) -> None:
    tensors = ctx.arg(0, "tensors")
    shape = ctx.out_shapes[0]
    dim = norm_dim(ctx.arg(1, "dim", 0), len(shape))
    parts = [(ctx.labels(t), ctx.shape(t)) for t in tensors if len(ctx.shape(t)) == len(shape)]
    out: TensorLabels = {}
    if any(dim in lab for lab, _ in parts):
        out[dim] = np.concatenate([
            lab[dim] if dim in lab else fresh_blocked(ctx, s[dim], "concatenated with channels we cannot follow")
            for lab, s in parts])
    for d in range(len(shape)):
        if d != dim:
            merged = merge_dim(ctx, [(lab.get(d), s[d]) for lab, s in parts], shape[d], "'cat'")
            if merged is not None:
                out[d] = merged
    ctx.set_out(out)


@register("stack")
def stack(ctx: RuleContext) -> None:
    tensors = ctx.arg(0, "tensors")
    shape = ctx.out_shapes[0]
    dim = norm_dim(ctx.arg(1, "dim", 0), len(shape))
    parts = [(ctx.labels(t), ctx.shape(t)) for t in tensors]
    out: TensorLabels = {}
    for d in range(len(shape) - 1):
        merged = merge_dim(ctx, [(lab.get(d), s[d]) for lab, s in parts], shape[d + (d >= dim)], "'stack'")
        if merged is not None:
            out[d + (d >= dim)] = merged
    ctx.set_out(out)


def _equal_pieces(ctx: RuleContext, sizes: list[int]) -> bool:
    """``chunk(n)`` or ``split(size)`` into equal pieces: the pieces can shrink alike.

    ``chunk`` computes the piece size at run time. ``split``'s size is the model's number,
    usually an attribute (``self.split_size``) that apply updates with the piece size (see
    :mod:`pruneconf.apply.attributes`); a literal that cannot follow is caught by the dry run.
    """
    if len(set(sizes)) != 1:
        return False
    return ctx.op == "chunk" or (ctx.op == "split" and isinstance(ctx.arg(1, "split_size_or_sections"), int))


@register("split", "split_with_sizes", "tensor_split", "chunk", "unbind", "hsplit", "vsplit")
def split(ctx: RuleContext) -> None:
    """Pieces along a channel dim: ``chunk`` couples positions, constant sizes block."""
    x = ctx.arg(0, "input")
    shape, labels = ctx.shape(x), ctx.labels(x)
    default = {"hsplit": 1 if len(shape) > 1 else 0, "vsplit": 0}.get(ctx.op, 0)
    dim_pos = {"chunk": 2, "split": 2, "split_with_sizes": 2, "tensor_split": 2, "unbind": 1}.get(ctx.op)
    dim = norm_dim(ctx.arg(dim_pos, "dim", default) if dim_pos else default, len(shape))
    sizes = [s[dim] if ctx.op != "unbind" else 1 for s in ctx.out_shapes]
    lab = labels.get(dim)
    pieces = None
    if lab is not None and lab.size > 1 and len(sizes) > 1:
        if _equal_pieces(ctx, sizes):
            pieces = [position_union(ctx, lab, len(sizes))] * len(sizes)
        else:
            ctx.block(lab, f"channels split into constant sizes {sizes} by '{ctx.op}'")
    elif lab is not None:
        pieces = [lab] * len(sizes)
    offset = 0
    for i, n in enumerate(sizes):
        if ctx.op == "unbind":
            out = keep_dims(labels, {d: d - (d > dim) for d in labels if d != dim})
        else:
            out = dict(labels)
            if lab is not None:
                out[dim] = pieces[i] if pieces is not None else lab[offset:offset + n]
        offset += n
        ctx.set_out(out, i)


@register("narrow", "select")
def narrow(ctx: RuleContext) -> None:
    """``narrow(dim, start, length)`` is ``x[start:start + length]`` that must stay ``length`` long."""
    x = ctx.arg(0, "input")
    shape, labels = ctx.shape(x), ctx.labels(x)
    dim = norm_dim(ctx.arg(1, "dim"), len(shape))
    if ctx.op == "select":
        index = [slice(None)] * dim + [ctx.arg(2, "index")]
    else:
        start, length = ctx.arg(2, "start"), ctx.arg(3, "length")
        stop = start + length if isinstance(start, int) and start + length != 0 else None
        index = [slice(None)] * dim + [slice(start, stop)]
    out = _select(ctx, labels, index_plan(shape, tuple(index)), ctx.out_shapes[0])
    if ctx.op == "narrow" and dim in out and out[dim].size > 1:  # unlike a slice, the length is checked
        ctx.block(out[dim], "channels taken with a constant length by 'narrow'")
    ctx.set_out(out)


@register("glu")
def glu(ctx: RuleContext) -> None:
    """``a * sigmoid(b)`` over the two halves of ``dim``: halves coupled position-wise."""
    x = ctx.arg(0, "input")
    labels = dict(ctx.labels(x))
    dim = norm_dim(ctx.arg(1, "dim", -1), len(ctx.shape(x)))
    if dim in labels:
        labels[dim] = position_union(ctx, labels[dim], 2)
    ctx.set_out(labels)


@register("index_add", "index_copy")
def index_add(ctx: RuleContext) -> None:
    """``x.index_add(dim, index, source)``: rows of ``source`` written into ``x`` at ``index``.

    Outside ``dim`` the two share channels, as an add would (a mixture-of-experts layer adds
    each expert's output into the hidden states of the tokens it served). Positions along
    ``dim`` are chosen by data, so a channel dim there cannot be followed.
    """
    x, source = ctx.arg(0, "input"), ctx.arg(3, "source")
    shape = ctx.out_shapes[0]
    dim = norm_dim(ctx.arg(1, "dim"), len(shape))
    sx, ss, lx, ls = ctx.shape(x), ctx.shape(source), ctx.labels(x), ctx.labels(source)
    if len(sx) != len(ss):
        return unsupported(ctx)
    out: TensorLabels = {}
    for d, n in enumerate(shape):
        if d == dim:
            for lab in (lx.get(d), ls.get(d)):
                if lab is not None and lab.size > 1:
                    ctx.block(lab, f"positions chosen by an index tensor in '{ctx.op}'")
            continue
        merged = merge_dim(ctx, [(lx.get(d), n), (ls.get(d), ss[d])], n, f"'{ctx.op}'")
        if merged is not None:
            out[d] = merged
    ctx.set_out(out)
