"""Reductions and normalisations along a dim.

Reducing over a channel dim mixes channels (a sum adds pruned ones, a max may pick a pruned
one, a softmax normalises across them), so the reduced channel dims are blocked. Reductions
over other dims keep the channels. Statistics (mean, variance, standard deviation) are the
exception: RMSNorm and LayerNorm written as tensor ops (``x.pow(2).mean(-1, keepdim=True)``)
take them across the hidden size. The shrunk model computes them over the kept channels, and
so can the masked model (:mod:`pruneconf.masks.stats`), so their channels stay prunable,
noted ``channel_stats`` like an ``nn.LayerNorm``'s.
"""
from __future__ import annotations

import functools

import numpy as np

from ...trace.refs import Ref, iter_refs
from ..context import CHANNEL_STATS, Note, RuleContext, TensorLabels
from ..registry import register
from .common import as_dims, block_dims, keep_dims, norm_dim
from .elementwise import NARY, UNARY, nary

ELEMENTWISE = frozenset(NARY) | frozenset(UNARY)

# op -> (position of ``dim``, position of ``keepdim``)
REDUCTIONS = {
    "sum": (1, 2), "nansum": (1, 2), "prod": (1, 2),
    "amax": (1, 2), "amin": (1, 2), "max": (1, 2), "min": (1, 2), "argmax": (1, 2),
    "argmin": (1, 2), "logsumexp": (1, 2), "all": (1, 2), "any": (1, 2), "median": (1, 2),
    "nanmedian": (1, 2), "aminmax": (1, 2), "count_nonzero": (1, 9), "norm": (2, 3),
    "mode": (1, 2), "kthvalue": (2, 3), "quantile": (2, 3), "nanquantile": (2, 3),
}
ALONG = {"softmax": 1, "log_softmax": 1, "softmin": 1, "cumsum": 1, "cumprod": 1,
         "cummax": 1, "cummin": 1, "logcumsumexp": 1, "sort": 1, "argsort": 1}


# Statistics the masked model can take over the kept channels only: op -> (``dim``, ``keepdim``).
STATISTICS = {"mean": (1, 2), "nanmean": (1, 2), "var": (1, 3), "std": (1, 3), "var_mean": (1, 3),
              "std_mean": (1, 3)}


def reduced_dims(op: str, args: tuple, kwargs: dict, ndim: int) -> tuple[int, ...]:
    """The dims a reduction call reduces (all of them when ``dim`` is not given)."""
    pos = (REDUCTIONS.get(op) or STATISTICS[op])[0]
    return as_dims(args[pos] if len(args) > pos else kwargs.get("dim"), ndim)


def _reduce(ctx: RuleContext, positions: tuple[int, int]) -> tuple[TensorLabels, tuple[int, ...]]:
    """Set the outputs' labels (the input's, minus the reduced dims); return the input's
    labels and the reduced dims."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    dims = reduced_dims(ctx.op, ctx.args, ctx.attrs["kwargs"], nd)
    keepdim = bool(ctx.arg(positions[1], "keepdim", False))
    labels = ctx.labels(x)
    if keepdim:
        out = {d: lab for d, lab in labels.items() if d not in dims}
    else:
        out = keep_dims(labels, {d: d - sum(r < d for r in dims) for d in range(nd) if d not in dims})
    for i in range(len(ctx.out_shapes)):
        ctx.set_out(out, i)
    return labels, dims


@register(*(op for op in REDUCTIONS if op not in ("max", "min")))
def reduce_rule(ctx: RuleContext) -> None:
    labels, dims = _reduce(ctx, REDUCTIONS[ctx.op])
    block_dims(ctx, labels, dims, f"channels reduced by '{ctx.op}'")


@register("max", "min")
def max_min(ctx: RuleContext) -> None:
    """``torch.max(a, b)`` is elementwise; ``torch.max(x[, dim])`` is a reduction."""
    if isinstance(ctx.arg(1, "other"), Ref):
        nary(ctx)
    else:
        reduce_rule(ctx)


@register(*STATISTICS)
def statistic(ctx: RuleContext) -> None:
    """Mean, variance or standard deviation across channels, kept as a dim of size 1 and
    applied back to those same channels (a norm: ``x * rsqrt(x.pow(2).mean(-1, keepdim=True))``,
    ``x - x.mean(-1, keepdim=True)``): prunable, noted ``channel_stats`` so the masked model
    takes the statistic over the kept channels. Any other reduction across channels is blocked.
    Whether the result meets its channels again is known once unions are solved."""
    labels, dims = _reduce(ctx, STATISTICS[ctx.op])
    keepdim = bool(ctx.arg(STATISTICS[ctx.op][1], "keepdim", False))
    nd = len(ctx.shape(ctx.arg(0, "input")))
    for d in dims:
        lab = labels.get(d)
        if lab is None or lab.size <= 1:
            continue
        if not keepdim:
            ctx.block(lab, f"channels reduced by '{ctx.op}'")
            continue
        ctx.deferred.append(functools.partial(_applied_back, ctx, ctx.node, np.asarray(lab), nd - d))


NORM_HOPS = 6  # elementwise ops between a statistic and where a norm applies it (3 in RMSNorm)


def _applied_back(ctx: RuleContext, node: str, lab: np.ndarray, from_right: int, roots: np.ndarray) -> None:
    """Note ``lab`` if the statistic at ``node`` reaches, through at most ``NORM_HOPS``
    elementwise ops, one whose output carries the same channels along the reduced dim."""
    graph, frontier, seen = ctx.graph, [node], {node}
    for _ in range(NORM_HOPS):
        frontier = [n for f in frontier for n in graph.successors(f) if n not in seen
                    and graph.nodes[n]["kind"] == "call" and graph.nodes[n]["op"] in ELEMENTWISE]
        seen.update(frontier)
        for n in frontier:
            out = ctx.tensors.get((n, 0), {})
            dim = len(graph.nodes[n]["out_shapes"][0]) - from_right
            met = out.get(dim)
            if met is not None and len(met) == len(lab) and (roots[met] == roots[lab]).all():
                ctx.notes.append(Note(lab, CHANNEL_STATS, node))
                return
    ctx.space.block(lab, f"channels reduced by '{graph.nodes[node]['op']}' at '{node}' "
                         f"(not applied back to them as in a norm)")


@register(*ALONG)
def along(ctx: RuleContext) -> None:
    """Shape-preserving ops that mix values along one dim (softmax, cumsum, sort)."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    default = {"sort": -1, "argsort": -1}.get(ctx.op)
    dim = ctx.arg(ALONG[ctx.op], "dim", default)
    labels = ctx.labels(x)
    if dim is None:
        block_dims(ctx, labels, range(nd), f"channels mixed by '{ctx.op}'")
    else:
        block_dims(ctx, labels, (norm_dim(dim, nd),), f"channels mixed by '{ctx.op}'")
    for i in range(len(ctx.out_shapes)):
        ctx.set_out(labels, i)


@register("normalize")
def normalize(ctx: RuleContext) -> None:
    """``F.normalize(x, p, dim)``: ``x / ‖x‖_p`` along ``dim`` (SSD's L2Norm on conv4_3).

    A channel at zero adds nothing to a p-norm (p > 0) and stays zero once divided, so the
    masked model, whose pruned channels arrive as zeros from their masked layer, normalises
    exactly as the shrunk one: noted ``masked_contraction``, as attention's q·k. Were a pruned
    channel not zero there (``sigmoid`` between), masked and shrunk would differ and the dry
    run would leave the group whole."""
    x = ctx.arg(0, "input")
    p, dim = ctx.arg(1, "p", 2.0), ctx.arg(2, "dim", 1)
    labels = ctx.labels(x)
    lab = labels.get(norm_dim(dim, len(ctx.shape(x))))
    if lab is not None and lab.size > 1:
        if isinstance(p, (int, float)) and p > 0:
            ctx.note(lab, "masked_contraction")
        else:
            ctx.block(lab, f"channels mixed by 'normalize' with p={p}")
    ctx.set_out(labels)


# Secondary fields of a transformers ``ModelOutput`` named like these hold the residual
# stream's features: ``encoder_last_hidden_state``, ``hidden_states`` (one per layer).
FEATURE_FIELDS = ("hidden_state", "hidden_states")


def _pinned(ctx: RuleContext) -> list[Ref]:
    """The output tensors whose width callers depend on.

    The primary output (the first field: logits, a classifier's scores, a base model's
    ``last_hidden_state``) and every output of a plain tuple or dict keep their width. The
    secondary hidden-state fields of a ``ModelOutput`` (the tracer names its type) are the
    model's internal features: a seq2seq model's ``encoder_last_hidden_state`` is what its
    decoder's cross-attention reads, so pruning the hidden size must narrow it, and the
    shrunk model's copy is checked against the masked model's kept channels
    (:func:`pruneconf.apply.verify.kept_outputs`).
    """
    out = ctx.args[0]
    if not ctx.attrs["target"] or not isinstance(out, dict):
        return ctx.tensor_args()
    return [ref for k, (name, value) in enumerate(out.items())
            if k == 0 or not str(name).endswith(FEATURE_FIELDS) for ref in iter_refs(value)]


@register("output")
def output(ctx: RuleContext) -> None:
    """Channels that reach the model's pinned outputs keep their size: callers depend on it."""
    for ref in _pinned(ctx):
        ctx.block_tensor(ctx.labels(ref), "reaches the model output")
