"""Convolutions: the weight's output rows are new channels, its input columns consume them.

Grouped and depthwise convolutions prune whole convolution groups: input block ``a``, the
matching output rows and the channels feeding them become one channel, so ``groups``
shrinks and every remaining group keeps its full width (a depthwise conv "follows its
producer", with a channel multiplier repeating each input channel).
"""
from __future__ import annotations

import numpy as np

from ...trace.refs import Ref
from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register
from .common import block_dims, block_union, channel_labels, fresh_blocked


def _layout(ctx: RuleContext, x: Ref, weight: Ref) -> tuple[int, tuple[int, ...], int]:
    """Channel dim of the input, its spatial dims, and the output's channel dim."""
    nd = len(ctx.shape(x))
    cd = 1 if nd == len(ctx.shape(weight)) else 0
    return cd, tuple(range(cd + 1, nd)), cd


def _batch_labels(ctx: RuleContext, x: Ref, cd: int) -> dict[int, np.ndarray]:
    return {0: ctx.labels(x)[0]} if cd == 1 and 0 in ctx.labels(x) else {}


def _bias(ctx: RuleContext, bias: object, labels: np.ndarray) -> None:
    if ctx.is_param(bias):
        ctx.union(ctx.role(bias, 0, FOLLOWER), labels)


@register("conv1d", "conv2d", "conv3d")
def conv(ctx: RuleContext) -> None:
    x, weight, bias = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    groups = ctx.arg(6, "groups", 1)
    cd, spatial, ocd = _layout(ctx, x, weight)
    block_dims(ctx, ctx.labels(x), spatial, f"channels convolved over by '{ctx.op}'")
    in_labels = channel_labels(ctx, x, cd)
    out = _batch_labels(ctx, x, cd)
    if not ctx.is_param(weight):
        ctx.block(in_labels, f"'{ctx.op}' with a weight that is not a parameter")
        out[ocd] = fresh_blocked(ctx, ctx.out_shapes[0][ocd], f"'{ctx.op}' with a weight that is not a parameter")
    elif groups == 1:
        ctx.union(in_labels, ctx.role(weight, 1, CONSUMER))
        out[ocd] = ctx.role(weight, 0, SOURCE)
    else:
        out[ocd] = ctx.role(weight, 0, FOLLOWER)
        roots = block_union(ctx, in_labels, groups)
        ctx.union(out[ocd].reshape(groups, -1), roots[:, None])
    _bias(ctx, bias, out[ocd])
    ctx.set_out(out)


@register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(ctx: RuleContext) -> None:
    """Transposed conv: weight is ``[C_in, C_out / groups, *k]``."""
    x, weight, bias = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    groups = ctx.arg(6, "groups", 1)
    cd, spatial, ocd = _layout(ctx, x, weight)
    block_dims(ctx, ctx.labels(x), spatial, f"channels convolved over by '{ctx.op}'")
    in_labels = channel_labels(ctx, x, cd)
    out = _batch_labels(ctx, x, cd)
    c_out = ctx.out_shapes[0][ocd]
    if not ctx.is_param(weight):
        ctx.block(in_labels, f"'{ctx.op}' with a weight that is not a parameter")
        out[ocd] = fresh_blocked(ctx, c_out, f"'{ctx.op}' with a weight that is not a parameter")
    elif groups == 1:
        ctx.union(in_labels, ctx.role(weight, 0, CONSUMER))
        out[ocd] = ctx.role(weight, 1, SOURCE)
    else:
        roots = block_union(ctx, in_labels, groups)
        ctx.union(ctx.role(weight, 0, FOLLOWER).reshape(groups, -1), roots[:, None])
        out[ocd] = ctx.role(bias, 0, FOLLOWER) if ctx.is_param(bias) else ctx.space.new(c_out)
        ctx.union(out[ocd].reshape(groups, -1), roots[:, None])
        bias = None
    _bias(ctx, bias, out[ocd])
    ctx.set_out(out)
