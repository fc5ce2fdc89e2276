"""Writes through a view, and slices that pick whole sections of a dim.

``qkv_bias = qkv_bias.clone(); qkv_bias[C:2 * C].zero_()`` (torchvision's Swin V2, which
keeps the key bias at zero) writes into ``qkv_bias`` through the view ``qkv_bias[C:2 * C]``.
The tracer re-points the written base at a ``view_write`` node
(:meth:`pruneconf.trace.tracer._Trace.mark_view_write`). The base keeps its channels: the
view's labels are the base's own (the ops that made the view map them), and what the
in-place op wrote there shares channels with the view position by position. So the base
after the write has its labels from before, coupled with whatever the write brought in.

The slice ``[C:2 * C]`` itself has bounds the model computes from the tensor's size
(``numel() // 3``). When the dim splits into equal sections that lose the same channels
position by position (q, k and v of one projection, coupled by the reshape into ``(3, heads,
head_dim)``), bounds on section boundaries still cut between the same sections after
pruning: :func:`section_slice` keeps such a slice prunable, checked once unions are solved.
"""
from __future__ import annotations

import functools
import math

import networkx as nx
import numpy as np

from ...trace.refs import Ref
from ..context import RuleContext
from ..registry import register, unsupported
from .common import merge_dim


@register("view_write")
def view_write(ctx: RuleContext) -> None:
    """``base`` after an in-place op wrote through a view of it: its own channels, with the
    view's coupled to what the op wrote, dim by dim."""
    base, writer = ctx.args[0], ctx.args[1]
    written = ctx.graph.nodes[writer.node]["args"]
    view = written[0] if written else None
    if not isinstance(view, Ref) or not _derived(ctx.graph, base.node, view.node) \
            or ctx.shape(view) != ctx.shape(writer):
        return unsupported(ctx)
    before, after = ctx.labels(view), ctx.labels(writer)
    for d, n in enumerate(ctx.shape(view)):
        merge_dim(ctx, [(before.get(d), n), (after.get(d), n)], n, "an in-place write through a view")
    ctx.set_out(ctx.labels(base))


def _derived(graph: nx.DiGraph, base: str, view: str) -> bool:
    """Whether ``view`` was computed from ``base`` by recorded ops (so its labels are the
    base's), or is the base itself."""
    return base == view or nx.has_path(graph, base, view)


def section_slice(ctx: RuleContext, lab: np.ndarray, start: int | None, stop: int | None, reason: str) -> bool:
    """Take ``lab[start:stop]`` as a run of whole sections when both bounds fall on the
    boundaries of equal sections of the dim; once unions are solved, a dim whose sections
    do not lose the same channels position by position has its anchors blocked with
    ``reason``, as :func:`~.common.anchored_slice` blocks a constant bound's. False when the
    bounds are not on such boundaries, or count from the back."""
    n = len(lab)
    if any(b is not None and b < 0 for b in (start, stop)):
        return False
    span = range(n)[start:stop]
    start, stop = span.start, span.stop
    sections = n // math.gcd(n, start, stop)
    if not 0 < stop - start < n or sections < 2:
        return False
    ctx.deferred.append(functools.partial(_aligned_sections, ctx, ctx.node, lab, sections, start, stop, reason))
    return True


def _aligned_sections(ctx: RuleContext, node: str, lab: np.ndarray, sections: int, start: int, stop: int,
                      reason: str, roots: np.ndarray) -> None:
    rows = roots[lab].reshape(sections, -1)
    if not (rows == rows[:1]).all():  # the anchors of a constant bound counted from the front
        ctx.space.block(lab[:stop if stop < len(lab) else start], f"{reason} at '{node}'")
