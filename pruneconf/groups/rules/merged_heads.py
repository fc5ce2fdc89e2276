"""Merging whole heads back with a per-head dim that a layer of its own labelled.

Attention that keeps its heads whole (see :meth:`RuleContext.block_contracted`) ends with
``x.transpose(1, 2).reshape(B, N, heads * head_dim)``. Usually only the heads carry
channels there. MViT pools its queries, keys and values with a depthwise ``Conv3d`` and a
``LayerNorm`` over ``head_dim``, shared by all heads (torchvision ``mvit.py``,
``MultiscaleAttention.pool_q/k/v``), so the head dim carries that conv's channels too, and
the merged channel ``(h, d)`` would be cut when either ``h`` or ``d`` is: no single group
says that. The pooling conv reads a head dim whose channels come from no layer it can
prune with, so its group stays whole anyway; then channel ``(h, d)`` goes exactly when head
``h`` does. The merge lets the heads carry the merged channels, and once unions are solved
checks that every other merged dim is indeed whole; if one is not, the merge blocks all of
them, as a merge of several channel dims always did.
"""
from __future__ import annotations

import functools

import numpy as np

from ..context import RuleContext, TensorLabels

MERGED = "several channel dims merged by '{op}'"


def whole_heads_merge(ctx: RuleContext, labels: TensorLabels, labelled: list[int]) -> int | None:
    """The dim among ``labelled`` (merged by one reshape) whose labels are whole heads that
    a split reshape carried, with the others left to a check once unions are solved; None
    when there is no such dim."""
    heads = [d for d in labelled if ctx.splits.get(int(labels[d][0])) and _kept_whole(ctx, labels[d][0])]
    if len(heads) != 1:
        return None
    others = [labels[d] for d in labelled if d != heads[0]]
    ctx.deferred.append(functools.partial(_others_whole, ctx, ctx.node, ctx.op, labels[heads[0]], others))
    return heads[0]


def _kept_whole(ctx: RuleContext, label: int) -> bool:
    """Whether the split reshape that carried ``label`` keeps its blocks (heads) whole."""
    nodes = ctx.splits[int(label)]
    return any(n in ctx.whole_blocks for n in ([nodes] if isinstance(nodes, str) else nodes))


def _others_whole(ctx: RuleContext, node: str, op: str, heads: np.ndarray, others: list[np.ndarray],
                  roots: np.ndarray) -> None:
    """Block the heads and the other merged dims unless those others are all whole."""
    blocked = np.zeros(len(roots), dtype=bool)
    for lab, _ in ctx.space.blocks:
        blocked[roots[lab]] = True
    if all(blocked[roots[lab]].all() for lab in others):
        return
    for lab in (heads, *others):
        ctx.space.block(lab, f"{MERGED.format(op=op)} at '{node}'")
