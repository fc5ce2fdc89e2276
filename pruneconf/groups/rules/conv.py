"""Convolutions: the weight's output rows are new channels, its input columns consume them.

A grouped convolution with as many outputs as inputs per group (ResNeXt, RegNet, DPN) is
pruned inside its groups, as Torch-Pruning does: output channel ``i`` follows input channel
``i``, every conv group keeps the same number of them (``Group.blocks``, see
:mod:`pruneconf.groups.conv_groups`), ``groups`` stays and each row keeps the columns of
its own group's kept inputs. Keeping half of each group quarters the conv's MACs, where
dropping half the groups only halves them. A depthwise conv "follows its producer" the same
way. Other grouped convs (a channel multiplier, a weight computed in forward, groups that
cannot keep equal counts) prune whole convolution groups: input block ``a``, the matching
output rows and the channels feeding them become one channel, so ``groups`` shrinks and
every remaining group keeps its full width.
"""
from __future__ import annotations

import numpy as np

from ...trace.refs import Ref
from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register
from .common import block_dims, block_union, channel_labels, follow_bias, fresh_blocked
from .parametrized import parametrization_reason
from .weights import underlying_weight


def _layout(ctx: RuleContext, x: Ref, weight: Ref) -> tuple[int, tuple[int, ...], int]:
    """Channel dim of the input, its spatial dims, and the output's channel dim."""
    nd = len(ctx.shape(x))
    cd = 1 if nd == len(ctx.shape(weight)) else 0
    return cd, tuple(range(cd + 1, nd)), cd


def _batch_labels(ctx: RuleContext, x: Ref, cd: int) -> dict[int, np.ndarray]:
    return {0: ctx.labels(x)[0]} if cd == 1 and 0 in ctx.labels(x) else {}


def _prologue(ctx: RuleContext):
    """Arguments, input channel labels and the output's pass-through labels of a convolution."""
    x, weight, bias = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    cd, spatial, ocd = _layout(ctx, x, weight)
    block_dims(ctx, ctx.labels(x), spatial, f"channels convolved over by '{ctx.op}'")
    return weight, bias, ctx.arg(6, "groups", 1), channel_labels(ctx, x, cd), _batch_labels(ctx, x, cd), ocd


def _not_a_parameter(ctx: RuleContext, weight: Ref, in_labels: np.ndarray, c_out: int) -> np.ndarray:
    """A weight computed in forward cannot be sliced: block both sides."""
    reason = parametrization_reason(ctx, weight) or f"'{ctx.op}' with a weight that is not a parameter"
    ctx.block(in_labels, reason)
    return fresh_blocked(ctx, c_out, reason)


def _inside_groups(ctx: RuleContext, in_labels: np.ndarray, c_out: int, groups: int) -> bool:
    """Whether a grouped conv can lose channels inside its groups: as many outputs as inputs
    per group, more than one (a depthwise conv already follows its producer channel by
    channel), and not refused on an earlier run (``ctx.coupled``)."""
    return len(in_labels) == c_out and c_out > groups and ctx.node not in ctx.coupled


@register("conv1d", "conv2d", "conv3d")
def conv(ctx: RuleContext) -> None:
    """A weight computed in forward from a parameter, row by row (timm ``StdConv2d``,
    weight and spectral norm, ``W + B @ A``), counts as that parameter."""
    weight, bias, groups, in_labels, out, ocd = _prologue(ctx)
    computed = underlying_weight(ctx, weight)
    if computed is not None:
        weight = computed.param
    if not ctx.is_param(weight):
        out[ocd] = _not_a_parameter(ctx, weight, in_labels, ctx.out_shapes[0][ocd])
    elif groups == 1:
        ctx.union(in_labels, ctx.role(weight, 1, CONSUMER))
        out[ocd] = ctx.role(weight, 0, SOURCE)
    elif computed is None and _inside_groups(ctx, in_labels, ctx.out_shapes[0][ocd], groups):
        out[ocd] = ctx.role(weight, 0, FOLLOWER)
        ctx.union(in_labels, out[ocd])
        ctx.grouped[ctx.node] = (ctx.param_name(weight), groups, out[ocd])
    else:  # whole conv groups go: each row keeps its columns, and so its statistics
        out[ocd] = ctx.role(weight, 0, FOLLOWER)
        roots = block_union(ctx, in_labels, groups)
        ctx.union(out[ocd].reshape(groups, -1), roots[:, None])
    if computed is not None:
        computed.use(ctx, out[ocd], in_labels if groups == 1 else None)
    follow_bias(ctx, bias, out[ocd])
    ctx.set_out(out)


@register("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(ctx: RuleContext) -> None:
    """Transposed conv: weight is ``[C_in, C_out / groups, *k]``; a computed one as for ``conv``."""
    weight, bias, groups, in_labels, out, ocd = _prologue(ctx)
    c_out = ctx.out_shapes[0][ocd]
    computed = underlying_weight(ctx, weight)
    if computed is not None:
        weight = computed.param
    if not ctx.is_param(weight):
        out[ocd] = _not_a_parameter(ctx, weight, in_labels, c_out)
    elif groups == 1:
        ctx.union(in_labels, ctx.role(weight, 0, CONSUMER))
        out[ocd] = ctx.role(weight, 1, SOURCE)
    else:
        roots = block_union(ctx, in_labels, groups)
        ctx.union(ctx.role(weight, 0, FOLLOWER).reshape(groups, -1), roots[:, None])
        out[ocd] = ctx.role(bias, 0, FOLLOWER) if ctx.is_param(bias) else ctx.space.new(c_out)
        ctx.union(out[ocd].reshape(groups, -1), roots[:, None])
        bias = None
    if computed is not None:
        computed.use(ctx, out[ocd], in_labels if groups == 1 else None)
    follow_bias(ctx, bias, out[ocd])
    ctx.set_out(out)
