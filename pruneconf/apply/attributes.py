"""Sizes kept in plain Python attributes of the user's modules (``self.num_heads``).

Model code often reshapes, splits or builds tensors with sizes it stored at construction:
``qkv.reshape(B, N, 3, self.num_heads, self.head_dim)``, ``qkv.split(self.split_size, 2)``,
``torch.zeros(1, self.n_heads, q, k)``. When a group shrinks a dim such a call produces,
the module's integer attributes holding the old size of that dim are set to the new size. This is a guess (the trace sees the number, not where it came from), so
it is only ever a candidate: the dry run and apply's own check compare the result with the
masked model, and a group whose shrinking still breaks the model is left whole.
"""
from __future__ import annotations

import weakref
from typing import Any, Iterator

import networkx as nx
import numpy as np
from torch import nn

from .._walk import submodule
from ..groups.rules.elementwise import UNIFORM_FACTORIES
from ..groups.rules.sections import sizes_within
from ..masks.plan import PruningPlan
from .input_widths import input_width_changes
from .layer_config import LayerConfig

RESHAPES = ("view", "reshape")
# The names model code gives head counts (transformers, timm): a reshape that infers the
# head count (``-1``) changes these when it loses heads.
HEAD_COUNTS = frozenset({"num_heads", "num_attention_heads", "n_heads", "n_head", "num_key_value_heads",
                         "num_kv_heads", "n_kv_heads"})


def _size_args(attrs: dict) -> tuple:
    """The sizes a reshape (after its tensor) or a one-value factory (``zeros(1, n, q, k)``,
    ``full(size, value)``, ``x.new_zeros(size)``) was called with."""
    first = 1 if attrs["op"] in RESHAPES or attrs["op"].startswith("new_") else 0
    key = "shape" if attrs["op"] in RESHAPES else "size"
    args = attrs["args"][first:] or (attrs["kwargs"].get(key, ()),)
    if isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(a for a in args if type(a) is int)


_SIZED: "weakref.WeakKeyDictionary[nx.DiGraph, list]" = weakref.WeakKeyDictionary()
# Ops whose module holds their channel count without any tensor of that size, so shrinking
# parameters never reaches it: ``InstanceNorm2d(C, affine=False).num_features``.
CHANNEL_COUNTED = ("instance_norm",)
SIZED_OPS = RESHAPES + UNIFORM_FACTORIES + CHANNEL_COUNTED + ("split", "split_with_sizes", "getitem")


def _sized_calls(graph: nx.DiGraph) -> list[tuple[str, dict]]:
    """The calls of ``graph`` inside a module whose sizes may be module attributes (found once
    per graph: the dry run shrinks by many plans of one graph)."""
    if graph not in _SIZED:
        _SIZED[graph] = [(node, attrs) for node, attrs in graph.nodes(data=True)
                         if attrs["kind"] == "call" and attrs.get("module") is not None and attrs["op"] in SIZED_OPS]
    return _SIZED[graph]


def _resized_dims(graph: nx.DiGraph, plan: PruningPlan) -> Iterator[tuple[str, int, int, bool]]:
    """``(module path, old size, new size, literal)`` of every size a reshape, a one-value
    factory or an even ``split`` produces that the plan changes; ``literal`` when the call
    passed the size itself, not ``-1`` (a head count inferred from the tensor). Old and new
    are lists for a split by a list of sizes, and a getitem's slice bound moves to the count
    of channels kept before it."""
    for node, attrs in _sized_calls(graph):
        if attrs["op"] in RESHAPES or attrs["op"] in UNIFORM_FACTORIES:
            sizes = _size_args(attrs)
            for dim, keep in plan.surviving(node).items():
                old, new = attrs["out_shapes"][0][dim], int(keep.sum())
                if dim < len(sizes) and sizes[dim] in (old, -1) and new != old:
                    yield attrs["module"], old, new, sizes[dim] == old
        elif attrs["op"] == "split" and isinstance(size := _split_size(attrs), int):
            pieces = len(attrs["out_shapes"])
            for keep in plan.surviving(node).values():
                if len(keep) == size and int(keep.sum()) != size:
                    yield attrs["module"], size, int(keep.sum()), True
                    # the size may be computed from the whole: ``split(self.expand_chs // 2)``
                    yield attrs["module"], size * pieces, int(keep.sum()) * pieces, True
        elif attrs["op"] in ("split", "split_with_sizes") and isinstance(_split_size(attrs), (list, tuple)):
            yield from _resized_sections(plan, node, attrs, list(_split_size(attrs)))
            yield from held_pieces(graph, plan, node, attrs, list(_split_size(attrs)))
        elif attrs["op"] in CHANNEL_COUNTED:
            keep = plan.surviving(node).get(1)
            if keep is not None and not keep.all():
                yield attrs["module"], len(keep), int(keep.sum()), True
        elif attrs["op"] == "getitem":
            yield from _moved_bounds(plan, attrs)


def _staying_sizes(graph: nx.DiGraph, plan: PruningPlan) -> set[tuple[str, int]]:
    """``(module path, size)`` of every literal size a reshape or a split by a list of sizes
    keeps: an attribute holding it must stay, unless the same number also sizes a dim that
    shrinks (LeViT's ``num_heads`` and ``key_dim`` are both 16 in its last stage)."""
    out = set()
    for node, attrs in _sized_calls(graph):
        if attrs["op"] in RESHAPES:
            surviving, sizes = plan.surviving(node), _size_args(attrs)
            out.update((attrs["module"], n) for d, n in enumerate(attrs["out_shapes"][0])
                       if d < len(sizes) and sizes[d] == n and n > 1 and surviving.get(d, _ALL).all())
        elif attrs["op"] in ("split", "split_with_sizes") and isinstance(_split_size(attrs), (list, tuple)):
            out.update((attrs["module"], n) for n in _split_size(attrs) if type(n) is int)
    return out


_ALL = np.ones(1, dtype=bool)


def _kept_sections(plan: PruningPlan, node: str, attrs: dict, sizes: list[int]) -> list[int]:
    """The kept size of each piece of a split by a list of sizes."""
    args = attrs["args"]
    dim = args[2] if len(args) > 2 else attrs["kwargs"].get("dim", 0)
    dim = dim + len(attrs["out_shapes"][0]) if dim < 0 else dim
    return [int(keep[dim].sum()) if dim in keep else n
            for keep, n in zip((plan.surviving(node, i) for i in range(len(sizes))), sizes)]


def _resized_sections(plan: PruningPlan, node: str, attrs: dict, sizes: list[int]):
    """The kept sizes of a split by a list of sizes (MixNet's ``self.splits``)."""
    new = _kept_sections(plan, node, attrs, sizes)
    if new != sizes:
        yield attrs["module"], sizes, new, True


def held_pieces(graph: nx.DiGraph, plan: PruningPlan, node: str, attrs: dict, sizes: list[int]):
    """For a split whose sizes no attribute holds as a list, ``(holder, old, new)`` for each
    piece that shrinks and the nearest modules (the caller or those inside it) holding its
    size as an int: RAFT's ``self.update_block.hidden_state_size`` (see
    :mod:`pruneconf.groups.rules.sections`)."""
    module = attrs["module"]
    if any(_resized(v, sizes, sizes) is not None for v in graph.graph.get("sizes", {}).get(module, {}).values()):
        return
    within = sizes_within(graph, module)
    for old, new in zip(sizes, _kept_sections(plan, node, attrs, sizes)):
        holders = [path for path, held in within.items() if any(type(v) is int and v == old for v in held.values())]
        depth = min((path.count(".") + bool(path) for path in holders), default=0)
        for path in holders:  # the nearest only: ``update_block``, not ``update_block.motion_encoder``
            if old != new and path.count(".") + bool(path) == depth:
                yield path, old, new, True


def _moved_bounds(plan: PruningPlan, attrs: dict):
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
                yield attrs["module"], bound, int(keep[:bound].sum()), True


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


def _holders(obj: object, old: Any, new: Any, names) -> Iterator[tuple[str, Any]]:
    """``(name, value at the new size)`` of the public attributes of ``obj`` among ``names``
    (all if None) that hold the size ``old``."""
    values = vars(obj) if not isinstance(obj, LayerConfig) else {**vars(obj.shared), **obj.sizes}
    for name, value in values.items():
        if not name.startswith("_") and (names is None or name in names):
            resized = _resized(value, old, new)
            if resized is not None:
                yield name, resized


def size_attribute_changes(model: nn.Module, plan: PruningPlan) -> list[tuple[nn.Module, str, Any]]:
    """``(module, attribute, new value)`` for the attributes holding a size that shrinks.

    A literal size may be held by any attribute of the calling module (an int, a list of
    sizes, a shape tuple); a head
    count the call inferred (``view(B, S, -1, self.head_dim)``) only by one named as a head
    count (:data:`HEAD_COUNTS`): in the module or, when the module holds no head count of
    that value, in the config it reads (which then becomes the layer's own :class:`LayerConfig`).
    A literal that also sizes a dim that stays in the same module (LeViT's ``num_heads`` and
    ``key_dim``, both 16) updates only a head count, when one holds it.
    """
    changes: dict[tuple[int, str], tuple[nn.Module, str, Any]] = {}
    configs: dict[int, tuple[nn.Module, dict[str, int]]] = {}
    staying = _staying_sizes(plan.groups.graph, plan)
    for path, old, new, literal in _resized_dims(plan.groups.graph, plan):
        module = submodule(model, path)
        names = None if literal else HEAD_COUNTS
        if literal and type(old) is int and (path, old) in staying and any(_holders(module, old, new, HEAD_COUNTS)):
            names = HEAD_COUNTS  # the number sizes dims that stay, too: only the head count shrinks
        for name, value in _holders(module, old, new, names):
            changes.setdefault((id(module), name), (module, name, value))
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, nn.Module) \
                and not any(_holders(module, old, new, HEAD_COUNTS)):
            for name, value in _holders(config, old, new, HEAD_COUNTS):
                configs.setdefault(id(module), (module, {}))[1].setdefault(name, value)
    for module, sizes in configs.values():
        changes[(id(module), "config")] = (module, "config", LayerConfig(module.config, sizes))
    for module, name, value in input_width_changes(model, plan):
        changes.setdefault((id(module), name), (module, name, value))
    return list(changes.values())


def describe(module: nn.Module, name: str, value: Any) -> str:
    """``name: old -> new`` for the log; a layer config lists the sizes it overrides."""
    if isinstance(value, LayerConfig):
        old = getattr(module, name)
        return ", ".join(f"{name}.{k}: {getattr(old, k)} -> {v}" for k, v in value.sizes.items()
                         if getattr(old, k) != v)
    return f"{name}: {getattr(module, name)} -> {value}"


__all__ = ["HEAD_COUNTS", "describe", "size_attribute_changes"]
