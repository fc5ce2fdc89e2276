"""Why a group prunes in coarser steps than one column: the lines of the model's code that make it so.

A group whose channels are whole heads keeps, at 0.5, two of three heads: two thirds, not a
half. That is not a group left whole, so no reason says why; yet the user who asked for half
wants to know which line of their model fixes the step. The rules note the two causes on the
channels they concern (:data:`~.context.WHOLE_HEADS` where a split reshape cuts heads that q·k
contracts, :data:`~.context.SIZE_READ` where the code reshapes to a width it read from another
tensor's shape, tying that tensor to the heads), and the trace knows each op's line.
"""
from __future__ import annotations

import networkx as nx

from .context import SIZE_READ, WHOLE_HEADS
from .find import Group

_CAUSES = ((WHOLE_HEADS, "whole heads, split at"), (SIZE_READ, "a width read from a shape and reshaped to at"))


def channel_width(group: Group) -> int:
    """Columns of the center layer's output per group channel (64 for a stream tied to heads
    of 64, else 1); the center's, since a fused q/k/v projection holds three per head."""
    first = group.members[0] if group.members and group.channels else None
    return max(1, first.size // group.channels) if first is not None else 1


def coarse_steps(group: Group, graph: nx.DiGraph) -> str:
    """``"3 channels of 64 columns: whole heads, split at timm/eva.py:281; ..."``: how coarse
    the group's channels are and the model lines that make them so ("" when each channel
    is one column and nothing was noted)."""
    width = channel_width(group)
    causes = []
    for kind, what in _CAUSES:
        lines = dict.fromkeys(graph.nodes[n].get("where") or n for n in group.noted_at.get(kind, ()))
        if lines:
            causes.append(f"{what} {', '.join(lines)}")
    if width == 1 and not causes:
        return ""
    head = f"{group.channels} channels of {width} columns" if width > 1 else f"{group.channels} channels"
    return f"{head}: {'; '.join(causes)}" if causes else head


__all__ = ["channel_width", "coarse_steps"]
