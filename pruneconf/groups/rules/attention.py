"""Attention: ``nn.MultiheadAttention`` and ``scaled_dot_product_attention``.

The embedding dim is pruned at the boundary of the attention block (the input projection
columns and the output projection rows); heads and head dims are left whole.
"""
from __future__ import annotations

from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register
from .common import broadcast, channel_labels, fresh_blocked


@register("multi_head_attention_forward")
def multi_head_attention(ctx: RuleContext) -> None:
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    separate = ctx.arg(17, "use_separate_proj_weight", False)
    if separate:
        weights = (ctx.arg(18, "q_proj_weight"), ctx.arg(19, "k_proj_weight"), ctx.arg(20, "v_proj_weight"))
    else:
        weights = (ctx.arg(5, "in_proj_weight"),) * 3
    for x, w in zip((q, k, v), weights):
        if ctx.is_param(w):
            ctx.union(channel_labels(ctx, x, len(ctx.shape(x)) - 1), ctx.role(w, 1, CONSUMER))
        else:
            ctx.block(channel_labels(ctx, x, len(ctx.shape(x)) - 1),
                      "attention projection that is not a parameter")
    out_w, out_b = ctx.arg(11, "out_proj_weight"), ctx.arg(12, "out_proj_bias")
    nd = len(ctx.out_shapes[0])
    out = {d: lab for d, lab in ctx.labels(q).items() if d < nd - 1}
    if ctx.is_param(out_w):
        out[nd - 1] = ctx.role(out_w, 0, SOURCE)
        if ctx.is_param(out_b):
            ctx.union(ctx.role(out_b, 0, FOLLOWER), out[nd - 1])
    else:
        out[nd - 1] = fresh_blocked(ctx, ctx.out_shapes[0][-1], "attention output projection that is not a parameter")
    ctx.set_out(out)
    for i in range(1, len(ctx.out_shapes)):
        ctx.set_out({}, i)


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: RuleContext) -> None:
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    for x in (q, k):
        lab = ctx.labels(x).get(len(ctx.shape(x)) - 1)
        if lab is not None and lab.size > 1:
            ctx.block(lab, "query/key dim contracted inside attention")
    so = ctx.out_shapes[0]
    out = broadcast(ctx, (q, k, v), so, trailing=2)
    if (lab := ctx.labels(v).get(len(ctx.shape(v)) - 1)) is not None:
        out[len(so) - 1] = lab
    ctx.set_out(out)
