"""Ops over spatial dims (pooling, resizing, padding): channels pass through untouched."""
from __future__ import annotations

import re

import numpy as np

from ..context import RuleContext
from ..registry import register
from .common import anchored_slice, block_dims, fresh_blocked, norm_dim

POOLS = tuple(f"{kind}{k}d{suffix}" for k in (1, 2, 3)
              for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool",
                           "lp_pool", "fractional_max_pool")
              for suffix in ("", "_with_indices"))
RESIZE = ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
          "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
          "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
          "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa", "grid_sample")


def _spatial(ctx: RuleContext, k: int) -> None:
    x = ctx.arg(0, "input")
    labels = ctx.labels(x)
    nd = len(ctx.shape(x))
    block_dims(ctx, labels, range(nd - k, nd), f"channels pooled or resampled by '{ctx.op}'")
    kept = {d: lab for d, lab in labels.items() if d < nd - k}
    for i in range(len(ctx.out_shapes)):
        ctx.set_out(kept, i)


@register(*POOLS)
def pool(ctx: RuleContext) -> None:
    _spatial(ctx, int(re.search(r"(\d)d", ctx.op).group(1)))


@register(*RESIZE)
def resize(ctx: RuleContext) -> None:
    _spatial(ctx, len(ctx.shape(ctx.arg(0, "input"))) - 2)


def _padding(ctx: RuleContext, n: int) -> np.ndarray:
    """Labels of ``n`` constant padding channels (none for a crop): kept, never pruned."""
    labels = ctx.space.new(max(n, 0))
    ctx.pin(labels, "constant padding channels")
    return labels


@register("pad")
def pad(ctx: RuleContext) -> None:
    """Constant padding adds constant channels around the others, which pass through;
    negative amounts crop like a constant slice; other modes mix channels across the border.

    The padding amounts are the model's numbers, so the padding channels stay: they are
    pinned, not blocked, so whatever they are added to (a CIFAR ResNet's option-A shortcut,
    ``out + F.pad(x, (..., p, p))``) keeps those channels and prunes the rest."""
    x, amounts = ctx.arg(0, "input"), tuple(ctx.arg(1, "pad"))
    mode = ctx.arg(2, "mode", "constant")
    labels = dict(ctx.labels(x))
    nd = len(ctx.shape(x))
    for i in range(0, len(amounts), 2):
        d = norm_dim(-1 - i // 2, nd)
        before, after = amounts[i], amounts[i + 1]
        lab = labels.get(d)
        if lab is None or (before == 0 and after == 0):
            continue
        if mode != "constant":
            ctx.block(lab, f"channels padded in '{mode}' mode by 'pad'")
            labels[d] = fresh_blocked(ctx, ctx.out_shapes[0][d], "padding")
            continue
        kept = anchored_slice(ctx, lab, -before if before < 0 else None, after if after < 0 else None,
                              "channels cropped by 'pad'")
        labels[d] = np.concatenate([_padding(ctx, before), kept, _padding(ctx, after)])
    ctx.set_out(labels)
