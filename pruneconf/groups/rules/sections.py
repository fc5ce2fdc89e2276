"""Split sizes held one by one in the attributes of the calling module or of its parts.

RAFT splits its context encoder's output into the recurrent unit's initial hidden state
and the context (torchvision ``raft.py``, ``RAFT.forward``)::

    hidden_state_size = self.update_block.hidden_state_size
    out_channels_context = context_out.shape[1] - hidden_state_size
    hidden_state, context = torch.split(context_out, [hidden_state_size, out_channels_context], dim=1)

No attribute holds the list, but every size except one is an int attribute of the calling
module or of a module inside it, and the remaining one can be what is left of the tensor's
size. Each piece may then shrink on its own: apply sets those attributes to the kept sizes
(:func:`pruneconf.apply.attributes.held_pieces`). Whether the remaining size really follows
the tensor (and not a literal) the trace cannot see; the dry run checks it and leaves the
group whole, naming the line, if the shrunk model breaks.
"""
from __future__ import annotations

from typing import Any, Sequence

import networkx as nx
import numpy as np

from ..context import RuleContext
from .common import position_union


def sizes_within(graph: nx.DiGraph, module: str | None) -> dict[str, dict[str, Any]]:
    """The size attributes (``graph.graph['sizes']``) of ``module`` and of the blocks in it;
    layers that hold parameters are left out (their sizes are the resizer's: a conv's
    ``out_channels`` equal to a piece's size says nothing about the split)."""
    if module is None:
        return {}
    layers = {name.rpartition(".")[0] for name in graph.graph.get("params", {})}
    return {path: held for path, held in graph.graph.get("sizes", {}).items()
            if path == module or ((not module or path.startswith(module + ".")) and path not in layers)}


def _held_ints(graph: nx.DiGraph, module: str | None) -> set[int]:
    return {value for held in sizes_within(graph, module).values() for value in held.values() if type(value) is int}


def pieces_held_within(ctx: RuleContext, sections: Sequence[Any]) -> bool:
    """Whether all split sizes but one are int attributes of the calling module or its parts."""
    if len(sections) < 2 or not all(type(s) is int for s in sections):
        return False
    held = _held_ints(ctx.graph, ctx.attrs.get("module"))
    return sum(s not in held for s in sections) <= 1 and any(s in held for s in sections)


def held_piece_labels(ctx: RuleContext, lab: np.ndarray, sizes: Sequence[int],
                      sections: Sequence[Any]) -> list[np.ndarray] | None:
    """The pieces' labels of a split whose sizes are held one by one, or None when each piece
    keeps its own channels (always so for a list held by one attribute).

    The pieces of one conv's output are one group, and ranked as one, one piece could keep
    most of the channels and another none, while model code that computes a size as what is
    left checks it is not empty (RAFT: "The context encoder outputs ... channels, but it
    should have at strictly more than hidden_state"): each piece keeps its own share, at
    least one channel (:mod:`pruneconf.groups.pieces`). Equal sizes (raft_large's 128 and
    128) cannot tell apply which piece an attribute holds, so the pieces are coupled
    position by position and shrink alike, as ``chunk``'s do.
    """
    if ctx.size_attribute(sections) is not None:
        return None
    if len(set(sizes)) == 1:
        return [position_union(ctx, lab, len(sizes))] * len(sizes)
    ctx.share(np.split(lab, np.cumsum(sizes[:-1])))
    return None
