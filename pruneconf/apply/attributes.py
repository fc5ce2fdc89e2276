"""Sizes kept in plain Python attributes of the user's modules (``self.num_heads``).

Model code often reshapes or splits with sizes it stored at construction:
``qkv.reshape(B, N, 3, self.num_heads, self.head_dim)``, ``qkv.split(self.split_size, 2)``. When a group shrinks a dim such a
reshape produces, the module's integer attributes holding the old size of that dim are set
to the new size. This is a guess (the trace sees the number, not where it came from), so
it is only ever a candidate: the dry run and apply's own check compare the result with the
masked model, and a group whose shrinking still breaks the model is left whole.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import networkx as nx
from torch import nn

from ..masks.plan import PruningPlan

RESHAPES = ("view", "reshape")


def _size_args(attrs: dict) -> tuple:
    args = attrs["args"][1:] or (attrs["kwargs"].get("shape", ()),)
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


_SIZED: "weakref.WeakKeyDictionary[nx.DiGraph, list]" = weakref.WeakKeyDictionary()


def _sized_calls(graph: nx.DiGraph) -> list[tuple[str, dict]]:
    """The reshapes and splits of ``graph`` inside a module (found once per graph: the dry run
    shrinks by many plans of one graph)."""
    if graph not in _SIZED:
        _SIZED[graph] = [(node, attrs) for node, attrs in graph.nodes(data=True)
                         if attrs["kind"] == "call" and attrs.get("module") is not None
                         and attrs["op"] in RESHAPES + ("split",)]
    return _SIZED[graph]


def _resized_reshape_dims(graph: nx.DiGraph, plan: PruningPlan) -> Iterator[tuple[str, int, int]]:
    """``(module path, old size, new size)`` of every literal size a reshape or an even
    ``split`` passes that the plan changes."""
    for node, attrs in _sized_calls(graph):
        if attrs["op"] in RESHAPES:
            sizes = _size_args(attrs)
            for dim, keep in plan.surviving(node).items():
                old, new = attrs["out_shapes"][0][dim], int(keep.sum())
                if dim < len(sizes) and sizes[dim] == old and new != old:
                    yield attrs["module"], old, new
        elif attrs["op"] == "split" and isinstance(size := _split_size(attrs), int):
            for keep in plan.surviving(node).values():
                if len(keep) == size and int(keep.sum()) != size:
                    yield attrs["module"], size, int(keep.sum())


def _split_size(attrs: dict):
    args = attrs["args"]
    return args[1] if len(args) > 1 else attrs["kwargs"].get("split_size_or_sections")


def size_attribute_changes(model: nn.Module, plan: PruningPlan) -> list[tuple[nn.Module, str, int]]:
    """``(module, attribute, new value)`` for integer attributes equal to a size that shrinks."""
    changes: dict[tuple[int, str], tuple[nn.Module, str, int]] = {}
    for path, old, new in _resized_reshape_dims(plan.groups.graph, plan):
        module = model.get_submodule(path)
        for name, value in vars(module).items():
            if not name.startswith("_") and type(value) is int and value == old:
                changes.setdefault((id(module), name), (module, name, new))
    return list(changes.values())


__all__ = ["size_attribute_changes"]
