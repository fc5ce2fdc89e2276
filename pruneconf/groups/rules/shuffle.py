"""Channel shuffles: ``channel_shuffle`` ops and the same permutation written as view → transpose → view.

A shuffle moves channels without coupling them: the output's labels are the input's,
permuted, and the shuffle is recorded as a step of its group's trunk. An equal split of a
shuffled tensor (ShuffleNetV2's ``chunk`` in the next block) is recorded too instead of
coupling its pieces; :mod:`pruneconf.groups.routes` then chooses kept channels whose paths
through the shrunk model's shuffles and splits are their paths in the original, and the
order in which each layer sees them. Where they cannot (a layer reads the shuffled channels
through an op the routes cannot follow), the groups are found again with that shuffle
coupling index ``j`` of its groups, as a split reshape does.
"""
from __future__ import annotations

import numpy as np

from ..context import RuleContext, TensorLabels
from ..registry import register
from ..routes import SHUFFLE, SPLIT, Step, key
from .common import norm_dim, position_union


def _shuffled(ctx: RuleContext, labels: np.ndarray, groups: int) -> np.ndarray:
    """``[g, C/g] -> [C/g, g]`` on the labels, recorded as a step of the trunk."""
    out = labels.reshape(groups, -1).T.ravel()
    ctx.steps.append(Step(SHUFFLE, labels, (out,), groups, ctx.node))
    ctx.routed.add(key(out))
    return out


@register("channel_shuffle", "native_channel_shuffle")
def channel_shuffle(ctx: RuleContext) -> None:
    """Moved channels; where they cannot be routed, index ``j`` of every group coupled, so
    the groups stay equal and the shrunk shuffle keeps the kept channels in order."""
    x, groups = ctx.arg(0, "input"), ctx.arg(1, "groups")
    labels = dict(ctx.labels(x))
    if 1 in labels and groups > 1:
        if ctx.node in ctx.coupled:
            labels[1] = np.repeat(position_union(ctx, labels[1], groups), groups)
        else:
            labels[1] = _shuffled(ctx, labels[1], groups)
    ctx.set_out(labels)


def _only_user(ctx: RuleContext, node: str, ops: tuple[str, ...]) -> str | None:
    users = list(ctx.graph.successors(node))
    if len(users) == 1 and ctx.graph.nodes[users[0]].get("op") in ops:
        return users[0]
    return None


def follow_shuffle_view(ctx: RuleContext, labels: TensorLabels, src: tuple, dst: tuple) -> bool:
    """At a view that splits one channel dim ``C`` into ``(g, C/g)``: when its only use is
    a transpose of those two dims, then (through ``contiguous``) a view back to ``src``'s
    shape, label the three as one shuffle and return True. The two split dims carry no
    labels in between; the other dims get theirs back at the end. A shuffle whose channels
    cannot be routed is left to the reshape rules, which couple them."""
    split = [d for d in range(len(src)) if len(dst) == len(src) + 1 and src[:d] == dst[:d]
             and src[d + 1:] == dst[d + 2:] and dst[d] * dst[d + 1] == src[d] and dst[d] > 1 and dst[d + 1] > 1]
    if len(split) != 1 or split[0] not in labels or ctx.node in ctx.coupled:
        return False
    d = split[0]
    transpose = _only_user(ctx, ctx.node, ("transpose",))
    if transpose is None:
        return False
    args = ctx.graph.nodes[transpose]["args"]
    if len(args) < 3 or {norm_dim(a, len(dst)) for a in args[1:3]} != {d, d + 1}:
        return False
    chain = [transpose]
    while (user := _only_user(ctx, chain[-1], ("contiguous", "view", "reshape", "flatten"))) is not None:
        chain.append(user)
        if ctx.graph.nodes[user]["op"] != "contiguous":
            break
    last = ctx.graph.nodes[chain[-1]]
    if last["op"] == "contiguous" or tuple(last["out_shapes"][0]) != tuple(src):
        return False
    ctx.set_out({})
    for node in chain[:-1]:
        ctx.fixed[node] = {}
    ctx.fixed[chain[-1]] = {**labels, d: _shuffled(ctx, labels[d], dst[d])}
    return True


def split_shuffled(ctx: RuleContext, labels: np.ndarray, pieces: int) -> list[np.ndarray] | None:
    """Equal pieces of a shuffled tensor: each piece keeps its own channels (recorded as a
    step), or None when the tensor was not shuffled (then the pieces are coupled)."""
    if key(labels) not in ctx.routed:
        return None
    out = list(labels.reshape(pieces, -1))
    ctx.steps.append(Step(SPLIT, labels, tuple(out), pieces, ctx.node))
    return out
