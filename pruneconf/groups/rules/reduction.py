"""Reductions and normalisations along a dim.

Reducing over a channel dim mixes channels (a mean divides by their count, a max may pick
a pruned one, a softmax normalises across them), so the reduced channel dims are blocked.
Reductions over other dims keep the channels.
"""
from __future__ import annotations

from ..context import RuleContext
from ..registry import register
from .common import as_dims, block_dims, keep_dims, norm_dim

# op -> (position of ``dim``, position of ``keepdim``)
REDUCTIONS = {
    "sum": (1, 2), "mean": (1, 2), "nansum": (1, 2), "nanmean": (1, 2), "prod": (1, 2),
    "amax": (1, 2), "amin": (1, 2), "max": (1, 2), "min": (1, 2), "argmax": (1, 2),
    "argmin": (1, 2), "logsumexp": (1, 2), "all": (1, 2), "any": (1, 2), "median": (1, 2),
    "nanmedian": (1, 2), "aminmax": (1, 2), "count_nonzero": (1, 9), "std": (1, 3),
    "var": (1, 3), "std_mean": (1, 3), "var_mean": (1, 3), "norm": (2, 3),
    "mode": (1, 2), "kthvalue": (2, 3), "quantile": (2, 3), "nanquantile": (2, 3),
}
ALONG = {"softmax": 1, "log_softmax": 1, "softmin": 1, "cumsum": 1, "cumprod": 1,
         "cummax": 1, "cummin": 1, "logcumsumexp": 1, "normalize": 2, "sort": 1, "argsort": 1}


@register(*(op for op in REDUCTIONS if op not in ("max", "min")))
def reduce_rule(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    dim_pos, keep_pos = REDUCTIONS[ctx.op]
    dims = as_dims(ctx.arg(dim_pos, "dim"), nd)
    keepdim = bool(ctx.arg(keep_pos, "keepdim", False))
    labels = ctx.labels(x)
    block_dims(ctx, labels, dims, f"channels reduced by '{ctx.op}'")
    if keepdim:
        out = {d: lab for d, lab in labels.items() if d not in dims}
    else:
        out = keep_dims(labels, {d: d - sum(r < d for r in dims) for d in range(nd) if d not in dims})
    for i in range(len(ctx.out_shapes)):
        ctx.set_out(out, i)


@register(*ALONG)
def along(ctx: RuleContext) -> None:
    """Shape-preserving ops that mix values along one dim (softmax, cumsum, normalize)."""
    x = ctx.arg(0, "input")
    nd = len(ctx.shape(x))
    default = {"normalize": 1, "sort": -1, "argsort": -1}.get(ctx.op)
    dim = ctx.arg(ALONG[ctx.op], "dim", default)
    labels = ctx.labels(x)
    if dim is None:
        block_dims(ctx, labels, range(nd), f"channels mixed by '{ctx.op}'")
    else:
        block_dims(ctx, labels, (norm_dim(dim, nd),), f"channels mixed by '{ctx.op}'")
    for i in range(len(ctx.out_shapes)):
        ctx.set_out(labels, i)


@register("output")
def output(ctx: RuleContext) -> None:
    """Channels that reach the model's outputs keep their size: callers depend on it."""
    for ref in ctx.tensor_args():
        ctx.block_tensor(ctx.labels(ref), "reaches the model output")
