"""Attention: ``nn.MultiheadAttention`` and ``scaled_dot_product_attention``.

``nn.MultiheadAttention`` ties three sizes together: the query's feature dim, ``embed_dim``
and the inner q/k/v dim are one number, split evenly into ``num_heads`` heads. So its inner
dim ``i`` is coupled with query feature ``i``, and dim ``j`` of every head with dim ``j`` of
the others (a consistent head dimension): every head loses the same dims and all three
sizes stay equal. Pruned q and k dims are zero in the masked model, so dropping them from
the ``q·k`` products is exact; the softmax scale ``1/sqrt(head_dim)`` is kept by folding it
into the query projection when the layer shrinks (see the resizer).
"""
from __future__ import annotations

import numpy as np

from ...trace.refs import Ref
from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register, unsupported
from .common import broadcast, channel_labels, fresh_blocked, position_union


def _projections(ctx: RuleContext) -> list:
    """The q, k and v projection weights (one packed parameter appears three times)."""
    if ctx.arg(17, "use_separate_proj_weight", False):
        return [ctx.arg(18, "q_proj_weight"), ctx.arg(19, "k_proj_weight"), ctx.arg(20, "v_proj_weight")]
    return [ctx.arg(5, "in_proj_weight")] * 3


def _inner_rows(ctx: RuleContext, weights: list, embed: int) -> list[np.ndarray]:
    """Labels of the q, k and v rows (the inner dim) of the projections."""
    if weights[0] is weights[1]:
        rows = ctx.role(weights[0], 0, SOURCE)
        return [rows[:embed], rows[embed:2 * embed], rows[2 * embed:]]
    return [ctx.role(w, 0, SOURCE) for w in weights]


def _inner_followers(ctx: RuleContext, inner: list[np.ndarray]) -> None:
    """The in-projection bias and ``bias_k``/``bias_v`` follow the inner dims they add to."""
    bias = ctx.arg(6, "in_proj_bias")
    if ctx.is_param(bias):
        ctx.union(ctx.role(bias, 0, FOLLOWER), np.concatenate(inner))
    for index, name, rows in ((7, "bias_k", inner[1]), (8, "bias_v", inner[2])):
        extra = ctx.arg(index, name)
        if ctx.is_param(extra):
            ctx.union(ctx.role(extra, len(ctx.shape(extra)) - 1, FOLLOWER), rows)


@register("multi_head_attention_forward")
def multi_head_attention(ctx: RuleContext) -> None:
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    heads, weights = ctx.arg(4, "num_heads"), _projections(ctx)
    out_w, out_b = ctx.arg(11, "out_proj_weight"), ctx.arg(12, "out_proj_bias")
    if not all(ctx.is_param(w) for w in (*weights, out_w)) or ctx.arg(21, "static_k") is not None \
            or ctx.arg(22, "static_v") is not None:
        return unsupported(ctx, "attention with projections or keys that are not parameters")
    embed = ctx.shape(q)[-1]
    inner = _inner_rows(ctx, weights, embed)
    for x, w in zip((q, k, v), weights):
        ctx.union(channel_labels(ctx, x, len(ctx.shape(x)) - 1), ctx.role(w, 1, CONSUMER))
    for rows in (*inner[1:], ctx.role(out_w, 1, CONSUMER), channel_labels(ctx, q, len(ctx.shape(q)) - 1)):
        ctx.union(rows, inner[0])
    position_union(ctx, inner[0], heads)
    ctx.note(inner[0], "masked_contraction")  # q·k drop pruned dims because both are zero
    _inner_followers(ctx, inner)
    nd = len(ctx.out_shapes[0])
    out = {d: lab for d, lab in ctx.labels(q).items() if d < nd - 1}
    out[nd - 1] = ctx.role(out_w, 0, SOURCE)
    if ctx.is_param(out_b):
        ctx.union(ctx.role(out_b, 0, FOLLOWER), out[nd - 1])
    ctx.set_out(out)
    for i in range(1, len(ctx.out_shapes)):
        ctx.set_out({}, i)


def _key_value_heads(ctx: RuleContext, x, heads: int, gqa: bool):
    """Labels of key or value ``x`` as the query heads read them: with ``enable_gqa`` query
    head ``i`` reads key/value head ``i // n_rep``, so each key/value head's label repeats
    ``n_rep`` times (whole key/value heads are pruned with the query heads that read them,
    and ``n_rep`` stays what the model's code says)."""
    labels = ctx.labels(x)
    hd = len(ctx.shape(x)) - 3
    kv = ctx.shape(x)[hd] if hd >= 0 else 1
    if not gqa or kv == heads or hd < 0 or heads % kv:
        return labels
    if kv == 1:  # one key/value head for all queries: n_rep is the query head count
        return {**labels, hd: fresh_blocked(ctx, heads, "query heads sharing one key/value head")}
    if hd not in labels:
        return labels
    return {**labels, hd: np.repeat(labels[hd], heads // kv)}


@register("scaled_dot_product_attention")
def scaled_dot_product_attention(ctx: RuleContext) -> None:
    """Heads pair up across q, k, v and the mask (whole heads, see ``block_contracted``); the
    output has the values' dims. The additive mask (T5's relative position bias) shares the
    heads it spans."""
    q, k, v, mask = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value"), ctx.arg(3, "attn_mask")
    for x in (q, k):
        lab = ctx.labels(x).get(len(ctx.shape(x)) - 1)
        if lab is not None and lab.size > 1:
            ctx.block_contracted(lab, "query/key dim contracted inside attention")
    if (lab := ctx.labels(v).get(len(ctx.shape(v)) - 1)) is not None:
        ctx.keep_blocks_whole(lab)
    so = ctx.out_shapes[0]
    heads = ctx.shape(q)[-3] if len(ctx.shape(q)) >= 3 else 1
    gqa = bool(ctx.arg(7, "enable_gqa", False))
    refs = [q, k, v] + ([mask] if isinstance(mask, Ref) else [])
    labels = [ctx.labels(q), _key_value_heads(ctx, k, heads, gqa), _key_value_heads(ctx, v, heads, gqa)]
    labels += [ctx.labels(mask)] if isinstance(mask, Ref) else []
    shapes = [ctx.shape(r) for r in refs]
    for i in (1, 2):  # keys and values as the query heads see them
        if len(shapes[i]) >= 3 and len(labels[i].get(len(shapes[i]) - 3, ())) == heads:
            shapes[i] = (*shapes[i][:-3], heads, *shapes[i][-2:])
    out = broadcast(ctx, refs, so, trailing=2, labels=labels, shapes=shapes)
    if (lab := ctx.labels(v).get(len(ctx.shape(v)) - 1)) is not None:
        out[len(so) - 1] = lab
    ctx.set_out(out)
