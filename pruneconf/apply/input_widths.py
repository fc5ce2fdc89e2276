"""A block's input width held in an attribute it checks: ``assert x.shape[1] == self.channels``.

Some blocks store the width of the tensor they receive and check it in ``forward`` (diffusers'
``Upsample2D`` and ``Downsample2D``), or pass it on without any op of theirs producing a
tensor of that size, so neither the trace nor :mod:`pruneconf.apply.attributes` sees the
number. When a plan narrows a block's input along dim 1 (the channels of ``[N, C, ...]``),
the block's attributes named as an input width (:data:`INPUT_WIDTHS`) that hold the old
width take the new one. As for every size attribute this is a guess: the dry run compares
the shrunk model with the masked one and leaves a group whole if the guess was wrong.
Layers (modules without children) are left to the resizer, which sets their sizes itself.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import networkx as nx
from torch import nn

from .._walk import walk
from ..masks.plan import PruningPlan
from ..trace.refs import iter_refs

# The names blocks give the width of their input.
INPUT_WIDTHS = frozenset({"channels", "in_channels", "num_channels"})

_CALLS: "weakref.WeakKeyDictionary[nx.DiGraph, list]" = weakref.WeakKeyDictionary()


def _inside(path: str, scope: str) -> bool:
    return path == scope or path.startswith(scope + ".")


def _calls_in_order(graph: nx.DiGraph) -> list[tuple[str, dict]]:
    """``(node, attrs)`` of every call made inside a module, in forward order (sorted once per graph)."""
    if graph not in _CALLS:
        _CALLS[graph] = [(node, attrs) for _, node, attrs in sorted(
            (attrs["order"], node, attrs) for node, attrs in graph.nodes(data=True)
            if attrs["kind"] == "call" and attrs.get("module"))]
    return _CALLS[graph]


def block_inputs(graph: nx.DiGraph, scopes: set[str]) -> dict[str, tuple[str, int]]:
    """``{module path: (node, output index)}``: the first tensor each module of ``scopes`` reads
    from outside itself, i.e. the input its forward received."""
    found: dict[str, tuple[str, int]] = {}
    if not scopes:
        return found
    for node, attrs in _calls_in_order(graph):
        parts = attrs["module"].split(".")
        for scope in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):
            if scope not in scopes or scope in found:
                continue
            outer = [r for r in iter_refs(attrs["args"]) if graph.nodes[r.node]["kind"] in ("call", "input")
                     and not _inside(graph.nodes[r.node].get("module") or "", scope)]
            if outer:
                found[scope] = (outer[0].node, outer[0].index)
    return found


def _width_holders(model: nn.Module) -> dict[str, tuple[nn.Module, list[str]]]:
    """Blocks (modules with children) with an int attribute named as an input width, and those
    names. Plain attributes only: timm's ``ConvNormAct.in_channels`` is a property."""
    out = {}
    for path, module in walk(model).items:
        if module._modules:
            held = vars(module)
            names = [name for name in sorted(INPUT_WIDTHS) if type(held.get(name)) is int]
            if names:
                out[path] = (module, names)
    return out


def input_width_changes(model: nn.Module, plan: PruningPlan) -> Iterator[tuple[nn.Module, str, int]]:
    """``(block, attribute, new width)`` for each block whose input the plan narrows. Only
    blocks holding an input width are looked for in the graph (most blocks of most models
    hold none: finding every block's input cost a small model's prune a fifth of a forward)."""
    holders = _width_holders(model)
    for path, (node, index) in block_inputs(plan.groups.graph, set(holders)).items():
        keep = plan.surviving(node, index).get(1)
        if keep is None or keep.all():
            continue
        module, names = holders[path]
        for name in names:
            if vars(module)[name] == len(keep):
                yield module, name, int(keep.sum())


__all__ = ["INPUT_WIDTHS", "block_inputs", "input_width_changes"]
