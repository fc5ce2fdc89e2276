"""Tensor references and helpers to walk the nested containers ops take and return.

Recorded arguments keep their structure (tuples, lists, dicts, slices) with every tensor
replaced by a :class:`Ref`, so channel rules can read an op's arguments as they were
passed while the graph stays free of tensor data.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import torch


class Ref:
    """The ``index``-th tensor output of a recorded node.

    A ref points at its node's record rather than its name, because leaf-module nodes
    are renamed to their module path when the call returns.
    """

    __slots__ = ("record", "index")

    def __init__(self, record: Any, index: int = 0) -> None:
        self.record = record
        self.index = index

    @property
    def node(self) -> str:
        return self.record.name

    def __repr__(self) -> str:
        return f"%{self.node}" if self.index == 0 else f"%{self.node}[{self.index}]"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.record is self.record and other.index == self.index

    def __hash__(self) -> int:
        return hash((id(self.record), self.index))


_PLAIN = (int, float, bool, str, type(None), complex, torch.dtype, torch.device,
          torch.memory_format, torch.layout)


def map_structure(obj: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Rebuild ``obj`` with every tensor replaced by ``fn(tensor)``.

    Values that are neither containers nor plain scalars become their ``repr`` so the
    recorded graph never keeps user objects (and their memory) alive.
    """
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, _PLAIN) or obj is Ellipsis:
        return obj
    if isinstance(obj, torch.Size):
        return tuple(obj)
    if isinstance(obj, slice):
        return slice(map_structure(obj.start, fn), map_structure(obj.stop, fn),
                     map_structure(obj.step, fn))
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return tuple(map_structure(v, fn) for v in obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_structure(v, fn) for v in obj)
    if isinstance(obj, dict):
        return {k: map_structure(v, fn) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: map_structure(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
    return repr(obj)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Yield the tensors inside ``obj`` in a stable, depth-first order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from iter_tensors(getattr(obj, f.name))


def iter_refs(obj: Any) -> Iterator[Ref]:
    """Yield the refs inside a recorded argument structure."""
    if isinstance(obj, Ref):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_refs(v)
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_refs(v)
    elif isinstance(obj, slice):
        yield from iter_refs((obj.start, obj.stop, obj.step))
