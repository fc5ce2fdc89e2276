"""Stacked parameters: one tensor holding a weight per expert, each with its own channels.

A mixture-of-experts layer keeps its experts in stacked parameters (``gate_up_proj[E, 2I,
H]``, ``down_proj[E, H, I]``) and runs expert ``e`` on the slice ``param[e]``. The trace
records each slice as a parameter of its own (:meth:`pruneconf.trace.tracer._Trace.stack_slice`)
and the rules label each slice's dims apart, so the intermediate channel ``j`` of expert 0
and of expert 1 are different channels, ranked on their own weights. Dims that every
expert shares (the hidden size the experts read and write) still meet in one group through
the data flow, as for any layer.

One dense tensor cannot give its experts different widths, though. So the slices of a
stacked dim whose channels are each expert's own are joined into *one* group, with
``Group.blocks`` naming the expert of every channel: each expert keeps the same number of
channels, and chooses them by its own weights. ModelOpt's Minitron, on fused grouped-GEMM
experts, also keeps one width per layer but shares one kept-index set across the experts
(NVIDIA/Model-Optimizer#1955), although channel ``j`` of two experts are unrelated; here
each expert keeps its own best channels. Experts of different widths cannot be stacked in
one tensor; to shrink a layer unevenly, drop whole experts (``experts:`` in the recipe).

An expert the example never ran (a model with its own expert code, not one
:mod:`pruneconf.trace.experts` runs in full) or a stacked parameter also used whole leaves
every group it touches whole, with the reason: shrinking only some slices is impossible.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .context import SOURCE, Role, RuleContext


def check_coverage(ctx: RuleContext) -> None:
    """Block the slices of stacked parameters that cannot shrink together."""
    by_param: dict[str, set[int]] = defaultdict(set)
    for real, e in ctx.slices.values():
        by_param[real].add(e)
    whole = {name for name, _ in ctx.params}
    for real, seen in by_param.items():
        count = ctx.graph.graph["params"][real][0]
        missing = sorted(set(range(count)) - seen)
        if missing:
            reason = (f"experts {_ranges(missing)} of '{real}' never ran on the example input, "
                      f"so their channels are unknown")
        elif real in whole:
            reason = f"'{real}' is used whole as well as one expert at a time"
        else:
            continue
        for (name, dim), labels in ctx.params.items():
            if name == real or ctx.slices.get(name, ("",))[0] == real:
                ctx.space.block(labels, reason)


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def stack_links(ctx: RuleContext, roots: np.ndarray, roles: list[Role]) -> tuple[np.ndarray, np.ndarray]:
    """Label pairs that join the per-expert groups of one stacked dim into one group.

    Pairs channel 0 of each slice's source rows with channel 0 of slice 0's (for any
    number of experts this is E - 1 links per stacked dim), which leaves dims the experts
    share, already one group, as they are.
    """
    first: dict[tuple[str, int], int] = {}
    left, right = [], []
    for r in roles:
        if r.role != SOURCE or r.param not in ctx.slices:
            continue
        labels = roots[ctx.params[(r.param, r.dim)]]
        key = (ctx.slices[r.param][0], r.dim)
        if key in first:
            left.append(int(labels[0]))
            right.append(first[key])
        else:
            first[key] = int(labels[0])
    return np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)


def expert_blocks(channels: int, slice_sources: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray | None, str | None]:
    """The expert of each of a group's ``channels`` from its slice sources ``(e, channels)``.

    Returns ``(None, None)`` when the group's channels are shared by the experts (one
    channel in several slices), ``(blocks, None)`` for per-expert channels, or a reason
    when they cannot be pruned as equal blocks.
    """
    if not slice_sources:
        return None, None
    owner = np.full(channels, -1, dtype=np.int64)
    shared = False
    for e, chans in slice_sources:
        shared |= bool(((owner[chans] >= 0) & (owner[chans] != e)).any())
        owner[chans] = e
    if shared:
        return None, None
    if (owner < 0).any():
        return None, "the channels of separate experts meet channels of other layers"
    counts = np.bincount(owner)
    if len(set(counts.tolist())) != 1:
        return None, "the experts of one stacked tensor have different widths"
    return owner, None


__all__ = ["check_coverage", "expert_blocks", "stack_links"]
