"""Normalisation layers: per-channel affine parameters follow the channels they scale.

BatchNorm and InstanceNorm compute statistics per channel, so pruning is exact as is.
GroupNorm computes them per group of channels: whole groups are pruned together.
LayerNorm/RMSNorm over a channel dim compute statistics across channels; the channels
stay prunable but are noted (``channel_stats``) so masking can exclude pruned ones.
"""
from __future__ import annotations

from ..context import FOLLOWER, RuleContext
from ..registry import register
from .common import block_union, channel_labels


def _follow(ctx: RuleContext, params, labels) -> None:
    for p in params:
        if ctx.is_param(p):
            ctx.union(ctx.role(p, 0, FOLLOWER), labels)


@register("batch_norm", "instance_norm")
def batch_norm(ctx: RuleContext) -> None:
    x = ctx.arg(0, "input")
    params = [ctx.arg(i, name) for i, name in
              ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))]
    cd = 1 if len(ctx.shape(x)) > 1 else 0
    _follow(ctx, params, channel_labels(ctx, x, cd))
    ctx.set_out(ctx.labels(x))


@register("group_norm")
def group_norm(ctx: RuleContext) -> None:
    x, groups = ctx.arg(0, "input"), ctx.arg(1, "num_groups")
    labels = channel_labels(ctx, x, 1)
    block_union(ctx, labels, groups)
    _follow(ctx, (ctx.arg(2, "weight"), ctx.arg(3, "bias")), labels)
    ctx.set_out(ctx.labels(x))


@register("layer_norm", "rms_norm")
def layer_norm(ctx: RuleContext) -> None:
    x, normalized = ctx.arg(0, "input"), ctx.arg(1, "normalized_shape")
    weight = ctx.arg(2, "weight")
    bias = ctx.arg(3, "bias") if ctx.op == "layer_norm" else None
    nd, k = len(ctx.shape(x)), len(tuple(normalized))
    labels = ctx.labels(x)
    for pd, d in enumerate(range(nd - k, nd)):
        lab = labels.get(d)
        if lab is None or lab.size <= 1:
            continue
        ctx.note(lab, "channel_stats")
        for p in (weight, bias):
            if ctx.is_param(p):
                ctx.union(ctx.role(p, pd, FOLLOWER), lab)
    ctx.set_out(labels)
