"""Weights a parametrization computes in ``forward()``: weight norm and spectral norm.

``torch.nn.utils.parametrizations.weight_norm`` and the older hook form
``torch.nn.utils.weight_norm`` both compute ``torch._weight_norm(v, g, dim)``, that is
``g * v / ||v||`` with the norm taken over every dim but ``dim``. Entries along ``dim`` (a
conv's output rows) are computed separately: they prune as the rows of ``v``, and ``g``
follows them. Along the other dims a pruned column of ``v`` is zero in the masked model and
missing in the shrunk one, which gives the same norm, so masks must zero those columns of
``v`` (they do: ``v`` plays the weight's roles), and those groups are noted
``masked_contraction``: exact because pruned entries are zero, not because they are cut
off. A pruned row of ``v`` is zero too, and ``0 / ||0||`` is NaN, so while masks are
registered :mod:`pruneconf.masks.stats` normalises the kept rows only (noted
``weight_norm``), as the shrunk layer does.

``spectral_norm`` divides the weight by ``sigma = u · (W v)``, with ``u`` (a value per row
of ``W`` along the parametrization's ``dim``) and ``v`` (one per entry of the other dims,
flattened) buffers that power iteration updates in training. Sigma is not a property of each
row, but pruning leaves it alone as long as pruned rows and columns of ``W`` are zero, and
``u`` and ``v`` lose the entries of the channels pruned: then ``u · (W v)``, and each step of
power iteration, sum over the kept rows and columns only, in the masked model as in the
shrunk one (in eval and in training). So ``u`` follows the rows and ``v`` the columns, and
both groups are noted ``masked_contraction``: they are exact because pruned channels are
zero, not because they are cut off.

Any other parametrization (``orthogonal``: a matrix exponential of the whole matrix) mixes
rows: the layer stays whole, and the reason names the parametrization and how to remove it.
"""
from __future__ import annotations

import math

import numpy as np

from ...trace.refs import Ref, iter_refs
from ..context import FOLLOWER, Note, RuleContext
from .weights import Computed, clear_blocks_at, computed_weight, producer

WEIGHT_NORM = "weight_norm"  # note kind: a weight normalised row by row (masked: over kept rows)
_PARAMETRIZATIONS = ".parametrizations."


@computed_weight
def weight_norm(ctx: RuleContext, weight: Ref) -> Computed | None:
    """``torch._weight_norm(v, g, dim)`` of two parameters, ``dim`` an actual dim (not -1,
    the whole tensor's norm, which mixes rows)."""
    attrs = producer(ctx, weight, ("_weight_norm",))
    if attrs is None:
        return None
    args = attrs["args"] + (None,) * 3
    v, g, dim = args[0], args[1], attrs["kwargs"].get("dim", args[2])
    if not (ctx.is_param(v) and ctx.is_param(g)) or type(dim) is not int or not 0 <= dim < len(ctx.shape(v)):
        return None
    shape = ctx.shape(v)
    if ctx.shape(g) != tuple(n if d == dim else 1 for d, n in enumerate(shape)):
        return None

    def use(ctx: RuleContext, rows: np.ndarray, cols: np.ndarray | None) -> None:
        clear_blocks_at(ctx, [weight.node])
        kept_apart = ctx.param_dim(v, dim)
        if shape[dim] > 1:
            ctx.union(ctx.role(g, dim, FOLLOWER), kept_apart)
        ctx.notes.append(Note(kept_apart, WEIGHT_NORM, weight.node))
        for d in {0, 1} - {dim}:  # in the norm: exact because pruned entries are zero
            if d < len(shape) and shape[d] > 1:
                ctx.note(ctx.param_dim(v, d), "masked_contraction")
    return Computed(v, use)


def _calls_in(ctx: RuleContext, module: str) -> list[str]:
    return [n for n, a in ctx.graph.nodes(data=True) if a["kind"] == "call" and a["module"] == module]


def _buffer(ctx: RuleContext, calls: list[str], name: str) -> Ref | None:
    """A reference to the buffer called ``name``, as one of ``calls`` read it."""
    nodes = ctx.graph.nodes
    refs = (ref for node in calls for ref in iter_refs((nodes[node]["args"], nodes[node]["kwargs"])))
    return next((ref for ref in refs if nodes[ref.node]["target"] == name), None)


@computed_weight
def spectral_norm(ctx: RuleContext, weight: Ref) -> Computed | None:
    """``W / sigma`` computed by ``parametrizations.spectral_norm``'s module, with its ``u``
    and ``v`` buffers of the sizes the row dim and the flattened other dims have."""
    attrs = producer(ctx, weight, ("div",))
    if attrs is None or attrs["module_type"] != "_SpectralNorm" or len(attrs["args"]) != 2:
        return None
    w, sigma = attrs["args"]
    module = attrs["module"]
    flat = ctx.graph.nodes[w.node] if isinstance(w, Ref) else {}
    if flat.get("op") == "flatten" and flat["module"] == module and ctx.shape(flat["args"][0]) == ctx.shape(w):
        w = flat["args"][0]  # a 2-D weight flattened is itself: the trace sees the flatten's output
    dim = ctx.graph.graph.get("sizes", {}).get(module, {}).get("dim")
    calls = _calls_in(ctx, module)
    u, v = _buffer(ctx, calls, f"{module}._u"), _buffer(ctx, calls, f"{module}._v")
    if not ctx.is_param(w) or not isinstance(sigma, Ref) or ctx.shape(sigma) != () or dim not in (0, 1) \
            or u is None or v is None:
        return None
    shape = ctx.shape(w)
    if len(shape) < 2 or ctx.shape(u) != (shape[dim],) or ctx.shape(v) != (math.prod(shape) // shape[dim],):
        return None

    def use(ctx: RuleContext, rows: np.ndarray, cols: np.ndarray | None) -> None:
        clear_blocks_at(ctx, calls)
        other = 1 - dim  # first of the dims flattened into v's entries
        for buffer, labels in ((u, ctx.param_dim(w, dim)), (v, ctx.param_dim(w, other))):
            ctx.union(ctx.role(buffer, 0, FOLLOWER).reshape(len(labels), -1), labels[:, None])
            ctx.note(labels, "masked_contraction")
    return Computed(w, use)


def parametrization_reason(ctx: RuleContext, weight: object) -> str | None:
    """Why a weight computed by a parametrization no recogniser knows keeps its layer whole,
    naming the parametrization and how to take it off; None for any other weight. The
    channels of the computed weight itself are blocked too: whatever the parametrization
    did with them (``orthogonal`` multiplies a buffer by a matrix exponential), the layer
    cannot shrink them."""
    attrs = ctx.graph.nodes[weight.node] if isinstance(weight, Ref) else {}
    module = attrs.get("module") or ""
    if _PARAMETRIZATIONS not in module:
        return None
    layer, _, rest = module.partition(_PARAMETRIZATIONS)
    reason = (f"'{ctx.op}' with a weight computed by the parametrization {attrs['module_type']} ('{module}'), "
              f"which mixes its rows: remove it first (torch.nn.utils.parametrize.remove_parametrizations"
              f"(model.{layer}, '{rest.split('.')[0]}')) or leave this layer whole")
    ctx.block_tensor(ctx.labels(weight), reason)
    return reason
