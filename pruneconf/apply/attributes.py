"""Sizes kept in plain Python attributes of the user's modules (``self.num_heads``).

Model code often reshapes, splits or builds tensors with sizes it stored at construction:
``qkv.reshape(B, N, 3, self.num_heads, self.head_dim)``, ``qkv.split(self.split_size, 2)``,
``torch.zeros(1, self.n_heads, q, k)``. When a group shrinks a dim such a call produces,
the module's integer attributes holding the old size of that dim are set to the new size. This is a guess (the trace sees the number, not where it came from), so
it is only ever a candidate: the dry run and apply's own check compare the result with the
masked model, and a group whose shrinking still breaks the model is left whole.
"""
from __future__ import annotations

from typing import Any, Iterator

import networkx as nx
from torch import nn

from ..groups.rules.elementwise import UNIFORM_FACTORIES
from ..masks.plan import PruningPlan
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


def _resized_dims(graph: nx.DiGraph, plan: PruningPlan) -> Iterator[tuple[str, int, int, bool]]:
    """``(module path, old size, new size, literal)`` of every size a reshape, a one-value
    factory or an even ``split`` produces that the plan changes; ``literal`` when the call
    passed the size itself, not ``-1`` (a head count inferred from the tensor)."""
    for node, attrs in graph.nodes(data=True):
        if attrs["kind"] != "call" or attrs.get("module") is None:
            continue
        if attrs["op"] in RESHAPES or attrs["op"] in UNIFORM_FACTORIES:
            sizes = _size_args(attrs)
            for dim, keep in plan.surviving(node).items():
                old, new = attrs["out_shapes"][0][dim], int(keep.sum())
                if dim < len(sizes) and sizes[dim] in (old, -1) and new != old:
                    yield attrs["module"], old, new, sizes[dim] == old
        elif attrs["op"] == "split" and isinstance(size := _split_size(attrs), int):
            for keep in plan.surviving(node).values():
                if len(keep) == size and int(keep.sum()) != size:
                    yield attrs["module"], size, int(keep.sum()), True


def _split_size(attrs: dict):
    args = attrs["args"]
    return args[1] if len(args) > 1 else attrs["kwargs"].get("split_size_or_sections")


def _matches(obj: object, old: int, names) -> Iterator[str]:
    """Public integer attributes of ``obj`` among ``names`` (all if None) equal to ``old``."""
    values = vars(obj) if not isinstance(obj, LayerConfig) else {**vars(obj.shared), **obj.sizes}
    for name, value in values.items():
        if not name.startswith("_") and type(value) is int and value == old and (names is None or name in names):
            yield name


def size_attribute_changes(model: nn.Module, plan: PruningPlan) -> list[tuple[nn.Module, str, Any]]:
    """``(module, attribute, new value)`` for the attributes holding a size that shrinks.

    A literal size may be held by any integer attribute of the calling module; a head
    count the call inferred (``view(B, S, -1, self.head_dim)``) only by one named as a head
    count (:data:`HEAD_COUNTS`): in the module or, when the module holds no head count of
    that value, in the config it reads (which then becomes the layer's own :class:`LayerConfig`).
    """
    changes: dict[tuple[int, str], tuple[nn.Module, str, Any]] = {}
    configs: dict[int, tuple[nn.Module, dict[str, int]]] = {}
    for path, old, new, literal in _resized_dims(plan.groups.graph, plan):
        module = model.get_submodule(path)
        for name in _matches(module, old, None if literal else HEAD_COUNTS):
            changes.setdefault((id(module), name), (module, name, new))
        config = getattr(module, "config", None)
        if config is not None and not isinstance(config, nn.Module) and not any(_matches(module, old, HEAD_COUNTS)):
            for name in _matches(config, old, HEAD_COUNTS):
                configs.setdefault(id(module), (module, {}))[1].setdefault(name, new)
    for module, sizes in configs.values():
        changes[(id(module), "config")] = (module, "config", LayerConfig(module.config, sizes))
    return list(changes.values())


def describe(module: nn.Module, name: str, value: Any) -> str:
    """``name: old -> new`` for the log; a layer config lists the sizes it overrides."""
    if isinstance(value, LayerConfig):
        old = getattr(module, name)
        return ", ".join(f"{name}.{k}: {getattr(old, k)} -> {v}" for k, v in value.sizes.items()
                         if getattr(old, k) != v)
    return f"{name}: {getattr(module, name)} -> {value}"


__all__ = ["HEAD_COUNTS", "describe", "size_attribute_changes"]
