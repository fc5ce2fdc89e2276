"""Normalisation layers: per-channel affine parameters follow the channels they scale.

BatchNorm and InstanceNorm compute statistics per channel, so pruning is exact as is.
GroupNorm computes them per group of channels: whole groups are pruned together.
LayerNorm/RMSNorm over a channel dim compute statistics across channels; the channels
stay prunable but are noted (``channel_stats``, with the op node) so the masked model can
compute those statistics over the kept channels only (``pruneconf.masks.norms``).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...trace.refs import Ref
from ..context import CHANNEL_STATS, FOLLOWER, RuleContext
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
    """Several groups prune whole groups. One group (PoolFormer's ``GroupNorm1``) is a
    LayerNorm over channels and space: prunable channel by channel, noted ``channel_stats``
    so the masked model takes its statistics over the kept channels."""
    x, groups = ctx.arg(0, "input"), ctx.arg(1, "num_groups")
    labels = channel_labels(ctx, x, 1)
    weight, bias = ctx.arg(2, "weight"), ctx.arg(3, "bias")
    if groups == 1 and labels.size > 1:
        ctx.note(labels, CHANNEL_STATS)
        if not ctx.is_param(weight):
            ctx.block(labels, f"'{ctx.op}' without a weight parameter: masked statistics find a norm by its weight")
    else:
        block_union(ctx, labels, groups)
    _follow(ctx, (weight, bias), labels)
    ctx.set_out(ctx.labels(x))


NORM_OPS = ("layer_norm", "rms_norm")


def normalized_dims(normalized: Any) -> tuple[int, ...]:
    """``normalized_shape`` as a tuple (an int means one trailing dim)."""
    return (normalized,) if isinstance(normalized, int) else tuple(normalized)


def _couple_affine(ctx: RuleContext, tensor: Any, dim: int, labels: np.ndarray) -> None:
    """The norm's weight or bias scales the normalised channels one for one: a parameter
    becomes a follower member. Masking finds the norm call by its weight parameter
    (``pruneconf.masks.norms``), so a norm without one, or with computed affine tensors, is
    left whole: the shrunk model could not be checked against a masked one."""
    if ctx.is_param(tensor):
        ctx.union(ctx.role(tensor, dim, FOLLOWER), labels)
    elif isinstance(tensor, Ref):
        ctx.block(labels, f"'{ctx.op}' scales them by a computed tensor, not a parameter")


@register(*NORM_OPS)
def layer_norm(ctx: RuleContext) -> None:
    """Statistics across the normalised dims: their channels are prunable only if the masked
    model leaves the pruned ones out of mean and variance; the note tells masking where."""
    x, weight = ctx.arg(0, "input"), ctx.arg(2, "weight")
    bias = ctx.arg(3, "bias") if ctx.op == "layer_norm" else None
    nd, k = len(ctx.shape(x)), len(normalized_dims(ctx.arg(1, "normalized_shape")))
    labels = ctx.labels(x)
    for pd, d in enumerate(range(nd - k, nd)):
        lab = labels.get(d)
        if lab is None or lab.size <= 1:
            continue
        ctx.note(lab, CHANNEL_STATS)
        if weight is None:
            ctx.block(lab, f"'{ctx.op}' without a weight parameter: masked statistics find a norm by its weight")
        for tensor in (weight, bias):
            _couple_affine(ctx, tensor, pd, lab)
    ctx.set_out(labels)
