"""torchvision's detection ops (``torch.ops.torchvision``): RoI pooling and non-maximum
suppression.

RoI pooling crops each box out of a feature map and pools it to a fixed grid, channel by
channel: output channel ``c`` reads input channel ``c`` only, so channels pass through. The
position-sensitive variants (R-FCN) give output channel ``c`` at bin ``(i, j)`` from input
channel ``(c·ph + i)·pw + j``: one output channel reads a block of ``ph·pw`` input channels,
which are pruned together. Batch, box and spatial positions are not channels. Boxes are
coordinates (``x1, y1, x2, y2``, with a leading batch index for RoIs): the layer that
predicts them cannot lose a column of them, and the indices ``nms`` keeps carry no
channels.
"""
from __future__ import annotations

from ...trace.refs import Ref
from ..context import RuleContext
from ..registry import register
from .common import block_dims, block_union, channel_labels


def _block_boxes(ctx: RuleContext, boxes: object) -> None:
    """Box coordinates and RoI rows are fixed by the op's format."""
    if isinstance(boxes, Ref):
        labels = ctx.labels(boxes)
        block_dims(ctx, labels, labels, f"box coordinates read by '{ctx.op}'")


def _pooled(ctx: RuleContext, blocks: int) -> None:
    """``(input[N, C, H, W], rois[K, 5], ...) -> [K, C / blocks, ph, pw]`` (plus the argmax or
    channel map, shaped like the output, that the backward pass reads)."""
    x, rois = ctx.arg(0, "input"), ctx.arg(1, "rois")
    labels = ctx.labels(x)
    block_dims(ctx, labels, (0, 2, 3), f"batch or spatial position pooled by '{ctx.op}'")
    _block_boxes(ctx, rois)
    channels = channel_labels(ctx, x, 1)
    out = block_union(ctx, channels, len(channels) // blocks) if blocks > 1 else channels
    for i in range(len(ctx.out_shapes)):
        ctx.set_out({1: out}, i)


@register("roi_align", "roi_pool")
def roi_pool(ctx: RuleContext) -> None:
    """Each channel is pooled on its own: the output has the input's channels."""
    _pooled(ctx, 1)


@register("ps_roi_align", "ps_roi_pool")
def ps_roi_pool(ctx: RuleContext) -> None:
    """Position-sensitive pooling: ``ph·pw`` consecutive input channels make one output channel."""
    ph, pw = ctx.out_shapes[0][2:4]
    _pooled(ctx, ph * pw)


@register("nms")
def nms(ctx: RuleContext) -> None:
    """``nms(boxes[K, 4], scores[K], iou) -> kept indices``: coordinates, no channels out."""
    _block_boxes(ctx, ctx.arg(0, "dets"))
    scores = ctx.arg(1, "scores")
    if isinstance(scores, Ref):
        labels = ctx.labels(scores)
        block_dims(ctx, labels, labels, "scores ranked by 'nms'")
    ctx.set_out({})
