"""Indexing, concatenation and splitting along dims.

Model code writes slice bounds and split sizes as constants (``x[:, :32]``,
``torch.split(x, [16, 48], 1)``) that stay the same after pruning. A constant slice bound
counts from the front (or, when negative, from the back), so the channels between it and
that end are blocked: a slice then still cuts the same channels, and the channels beyond
its anchors stay prunable (``x[:, 8:]`` prunes freely after channel 8). Steps other than 1
block the dim. Constant split sizes must add up to the dim, so they block it. A bound or
split sizes that the module holds in an attribute (``x[:, :self.c]``, ``split(x,
self.splits)``) are not anchors: apply updates the attribute to the kept sizes, the dry run
checks the guess. ``chunk`` is computed from the tensor's size at run time: its pieces are coupled position by position,
so they shrink alike and the model's own ``chunk`` call still splits them correctly.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ...trace.refs import Ref
from ..context import RuleContext, TensorLabels
from ..registry import register, unsupported
from .chunks import uneven_chunk
from .common import anchored_slice, fresh_blocked, keep_dims, merge_dim, norm_dim, position_union
from .shuffle import split_shuffled
from .views import section_slice
from .sections import held_piece_labels, pieces_held_within

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


def _span(shape: tuple[int, ...], index: Any) -> tuple[int, int, int] | None:
    """``(dim, start, stop)`` of a basic index that slices one dim with step 1 and keeps the
    others whole, or None."""
    plan = index_plan(shape, index)
    cut = [(d, i) for d, _, i in (plan or ()) if not _whole(i, shape[d])]
    if plan is None or len(cut) != 1 or not isinstance(cut[0][1], slice) or cut[0][1].step not in (None, 1):
        return None
    d, i = cut[0]
    if not all(b is None or type(b) is int for b in (i.start, i.stop)):
        return None
    span = range(shape[d])[i]
    return d, span.start, span.stop


def _heads_of(graph, node: str, shape: tuple[int, ...], dim: int) -> int | None:
    """The head size if every consumer of ``node`` (a slice of ``shape`` along ``dim``)
    reshapes it into ``(heads, head_size)`` there, else None."""
    size, users = set(), list(graph.successors(node))
    for user in users:
        attrs = graph.nodes[user]
        out = tuple(attrs["out_shapes"][0])
        if attrs["op"] not in ("view", "reshape") or len(out) != len(shape) + 1 \
                or out[:dim] != shape[:dim] or out[dim + 2:] != shape[dim + 1:]:
            return None
        size.add(out[dim + 1])
    return size.pop() if len(size) == 1 and users else None


def _head_sections(ctx: RuleContext, x: Ref, dim: int) -> int | None:
    """The head size if the slices of ``x`` along ``dim`` are sections split into heads.

    A fused projection (Phi-3's ``qkv_proj``) is sliced into queries, keys and values at
    offsets the model computes from its head counts (``config.num_attention_heads *
    head_dim``). When the slices tile the dim and each is only reshaped into heads, every
    section may lose whole heads (checked once unions are solved, see
    :func:`_whole_heads`): apply updates the head counts the offsets come from
    (:mod:`pruneconf.apply.attributes`), and the dry run leaves the group whole if the
    offsets do not follow.
    """
    shape, spans, sizes = ctx.shape(x), [], set()
    for user in ctx.graph.successors(x.node):
        attrs = ctx.graph.nodes[user]
        if attrs["op"] != "getitem" or attrs["args"][0] != x:
            continue
        span = _span(shape, attrs["args"][1])
        if span is None or span[0] != dim:
            return None
        sizes.add(_heads_of(ctx.graph, user, tuple(attrs["out_shapes"][0]), dim))
        spans.append(span[1:])
    spans.sort()
    tiled = (len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == shape[dim]
             and all(a[1] == b[0] for a, b in zip(spans, spans[1:])))
    return sizes.pop() if tiled and len(sizes) == 1 and None not in sizes else None


def _whole_heads(ctx: RuleContext, node: str, lab: np.ndarray, size: int, roots: np.ndarray) -> None:
    """Block a section whose heads are not pruned whole (each head one channel): its
    offsets would no longer be multiples of the head size."""
    heads = roots[lab].reshape(-1, size)
    if not (heads == heads[:, :1]).all():
        ctx.space.block(lab, f"{PARTIAL.format(op='getitem')} (a section not pruned in whole heads) at '{node}'")


def _held_bounds(ctx: RuleContext, index: Any, start: Any, stop: Any) -> bool:
    """A slice ``x[:, :self.c]`` or ``x[:, self.c:]`` whose bound the module holds in an int
    attribute (DPN's ``num_1x1_c``, ReXNet's ``in_channels``): apply sets the attribute to
    the channels kept before it, so the slice still cuts between the same channels."""
    bounds = [b for b in (start, stop) if b not in (None, 0)]
    return (isinstance(index, slice) and len(bounds) == 1 and type(bounds[0]) is int and bounds[0] > 0
            and ctx.size_attribute(bounds[0]) is not None)


def _select(ctx: RuleContext, labels: TensorLabels, plan, out_shape, sections: int | None = None,
            head_size: int = 0) -> TensorLabels:
    """Labels of ``x[index]``; constant bounds on a channel dim block what they anchor,
    except bounds the module holds in an attribute and on the dim ``sections`` that slices
    cut into sections of heads of ``head_size``."""
    out: TensorLabels = {}
    reason = PARTIAL.format(op=ctx.op)
    for d, o, index in plan:
        lab = labels.get(d)
        if lab is None:
            continue
        if _whole(index, len(lab)):
            kept = lab
        elif d == sections:
            kept = lab[index]
            ctx.deferred.append(functools.partial(_whole_heads, ctx, ctx.node, kept, head_size))
        else:
            start, stop, step = _bounds(index)
            if step in (None, 1) and _held_bounds(ctx, index, start, stop):
                kept = lab[start:stop]  # apply moves the attribute with the channels before it
            elif step in (None, 1) and all(b is None or type(b) is int for b in (start, stop)):
                on_sections = section_slice(ctx, lab, start, stop, reason)  # q, k, v of one projection
                kept = lab[start:stop] if on_sections else anchored_slice(ctx, lab, start, stop, reason)
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
    span = _span(ctx.shape(x), index)
    channels = span is not None and span[0] in ctx.labels(x)  # a dim without channels has no heads
    head_size = _head_sections(ctx, x, span[0]) if channels else None
    ctx.set_out(_select(ctx, ctx.labels(x), plan, ctx.out_shapes[0], span[0] if head_size else None, head_size or 0))


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


def _held_sections(ctx: RuleContext) -> bool:
    """Split sizes the module holds in an attribute (MixNet's ``self.splits``): every piece
    can shrink on its own, and apply sets the attribute to the kept sizes."""
    sections = ctx.arg(1, "split_size_or_sections")
    return (ctx.op in ("split", "split_with_sizes") and isinstance(sections, (list, tuple))
            and (ctx.size_attribute(sections) is not None or pieces_held_within(ctx, sections)))


@register("split", "split_with_sizes", "tensor_split", "chunk", "unbind", "hsplit", "vsplit")
def split(ctx: RuleContext) -> None:
    """Pieces along a channel dim: ``chunk`` couples positions (not after a channel shuffle,
    see :mod:`.shuffle`), sizes held in an attribute keep each piece's channels, other
    constant sizes block."""
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
            pieces = split_shuffled(ctx, lab, len(sizes)) or [position_union(ctx, lab, len(sizes))] * len(sizes)
        elif _held_sections(ctx):  # each piece keeps its own channels; apply updates the sizes' attribute
            pieces = held_piece_labels(ctx, lab, sizes, ctx.arg(1, "split_size_or_sections"))
        elif (pieces := uneven_chunk(ctx, lab, sizes)) is not None:
            pass  # pieces coupled so that the model's chunk still cuts them apart
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
