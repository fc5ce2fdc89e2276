"""Sizes kept in plain Python attributes of the user's modules (``self.num_heads``).

Model code often reshapes or splits with sizes it stored at construction:
``qkv.reshape(B, N, 3, self.num_heads, self.head_dim)``, ``qkv.split(self.split_size, 2)``. When a group shrinks a dim such a
reshape produces, the module's integer attributes holding the old size of that dim are set
to the new size. This is a guess (the trace sees the number, not where it came from), so
it is only ever a candidate: the dry run and apply's own check compare the result with the
masked model, and a group whose shrinking still breaks the model is left whole.
"""
from __future__ import annotations

from typing import Any, Iterator

import networkx as nx
from torch import nn

from ..masks.plan import PruningPlan

RESHAPES = ("view", "reshape")


def _size_args(attrs: dict) -> tuple:
    args = attrs["args"][1:] or (attrs["kwargs"].get("shape", ()),)
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (tuple, list)) else tuple(args)


def _resized_reshape_dims(graph: nx.DiGraph, plan: PruningPlan) -> Iterator[tuple[str, int, int]]:
    """``(module path, old size, new size)`` of every literal size a reshape or an even
    ``split`` passes that the plan changes; old and new are lists for a split by a list
    of sizes, and a getitem's slice bound moves to the count of channels kept before it."""
    for node, attrs in graph.nodes(data=True):
        if attrs["kind"] != "call" or attrs.get("module") is None:
            continue
        if attrs["op"] in RESHAPES:
            sizes = _size_args(attrs)
            for dim, keep in plan.surviving(node).items():
                old, new = attrs["out_shapes"][0][dim], int(keep.sum())
                if dim < len(sizes) and sizes[dim] == old and new != old:
                    yield attrs["module"], old, new
        elif attrs["op"] == "split" and isinstance(_split_size(attrs), int):
            size, pieces = _split_size(attrs), len(attrs["out_shapes"])
            for keep in plan.surviving(node).values():
                if len(keep) == size and int(keep.sum()) != size:
                    yield attrs["module"], size, int(keep.sum())
                    # the size may be computed from the whole: ``split(self.expand_chs // 2)``
                    yield attrs["module"], size * pieces, int(keep.sum()) * pieces
        elif attrs["op"] in ("split", "split_with_sizes") and isinstance(_split_size(attrs), (list, tuple)):
            yield from _resized_sections(plan, node, attrs, list(_split_size(attrs)))
        elif attrs["op"] == "getitem":
            yield from _moved_bounds(graph, plan, attrs)


def _resized_sections(plan: PruningPlan, node: str, attrs: dict, sizes: list[int]):
    """The kept size of each piece of a split by a list of sizes (MixNet's ``self.splits``)."""
    args = attrs["args"]
    dim = args[2] if len(args) > 2 else attrs["kwargs"].get("dim", 0)
    dim = dim + len(attrs["out_shapes"][0]) if dim < 0 else dim
    new = [int(keep[dim].sum()) if dim in keep else n
           for keep, n in zip((plan.surviving(node, i) for i in range(len(sizes))), sizes)]
    if new != sizes:
        yield attrs["module"], sizes, new


def _moved_bounds(graph: nx.DiGraph, plan: PruningPlan, attrs: dict):
    """``(module, bound, kept channels before it)`` for each int slice bound of a getitem
    along a dim the plan shrinks (``x[:, :self.c]``): the bound moves with its channels."""
    x, index = attrs["args"][0], attrs["args"][1]
    items = index if isinstance(index, tuple) else (index,)
    if Ellipsis in items or not hasattr(x, "node"):
        return
    surviving = plan.surviving(x.node, x.index)
    for dim, item in enumerate(i for i in items if i is not None):
        keep = surviving.get(dim)
        if not isinstance(item, slice) or keep is None or keep.all():
            continue
        for bound in (item.start, item.stop):
            if type(bound) is int and 0 < bound < len(keep) and not keep[:bound].all():
                yield attrs["module"], bound, int(keep[:bound].sum())


def _split_size(attrs: dict):
    args = attrs["args"]
    return args[1] if len(args) > 1 else attrs["kwargs"].get("split_size_or_sections")


def _resized(value: Any, old: int, new: int) -> Any:
    """``value`` with the size ``old`` replaced by ``new``: an int equal to it, a tuple of
    ints holding it (a shape kept for ``view``: timm's ``Scale.shape = (dim, 1, 1)``), or a
    list of sizes equal to ``old`` when that is a list; else None."""
    if isinstance(old, list):  # a list of sizes, replaced as a whole
        return type(value)(new) if type(value) in (list, tuple) and list(value) == old else None
    if type(value) is int:
        return new if value == old else None
    if type(value) is tuple and value and all(type(v) is int for v in value) and old in value:
        return tuple(new if v == old else v for v in value)
    return None


def size_attribute_changes(model: nn.Module, plan: PruningPlan) -> list[tuple[nn.Module, str, Any]]:
    """``(module, attribute, new value)`` for attributes holding a size that shrinks."""
    changes: dict[tuple[int, str], tuple[nn.Module, str, Any]] = {}
    for path, old, new in _resized_reshape_dims(plan.groups.graph, plan):
        module = model.get_submodule(path)
        for name, value in vars(module).items():
            if name.startswith("_") or (id(module), name) in changes:
                continue
            resized = _resized(value, old, new)
            if resized is not None:
                changes[(id(module), name)] = (module, name, resized)
    return list(changes.values())


__all__ = ["size_attribute_changes"]
