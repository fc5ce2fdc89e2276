"""One walk of a model's module tree per prune, shared by every step that needs it.

A prune asks for the model's modules about twenty times: the trace, ranking's tensor map,
the masked forward's scopes, the shrink's slots, each ``get_submodule`` of a parameter's
owner. Each walk is a Python generator over every module, which on a small model such as
MobileNetV2 added up to a fifth of a forward pass. Nothing in a prune adds or removes
modules (shrinking replaces tensors, never modules), so within :func:`walked_once` the
first walk serves them all; outside it each call walks afresh, as the model may have changed.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


class Walk:
    """``model.named_modules(remove_duplicate=False)`` as a list, with the lookups built on it."""

    def __init__(self, model: nn.Module) -> None:
        self.items: list[tuple[str, nn.Module]] = list(model.named_modules(remove_duplicate=False))
        self._by_path: dict[str, nn.Module] | None = None
        self._path_of: dict[int, str] | None = None

    @property
    def by_path(self) -> dict[str, nn.Module]:
        """Module by path, every path of a shared module included."""
        if self._by_path is None:
            self._by_path = dict(self.items)
        return self._by_path

    @property
    def path_of(self) -> dict[int, str]:
        """First path of each module, by ``id``, as ``named_modules()`` names it."""
        if self._path_of is None:
            self._path_of = {}
            for path, module in self.items:
                self._path_of.setdefault(id(module), path)
        return self._path_of


_ACTIVE: dict[int, Walk] = {}


@contextlib.contextmanager
def walked_once(model: nn.Module) -> Iterator[Walk]:
    """Within the block, :func:`walk` of ``model`` returns one shared walk (re-entrant)."""
    if id(model) in _ACTIVE:
        yield _ACTIVE[id(model)]
        return
    _ACTIVE[id(model)] = shared = Walk(model)
    try:
        yield shared
    finally:
        del _ACTIVE[id(model)]


def walk(model: nn.Module) -> Walk:
    """The walk of ``model``'s modules: the shared one inside :func:`walked_once`, else a new one."""
    return _ACTIVE.get(id(model)) or Walk(model)


def submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, by one dict lookup inside :func:`walked_once` (a path
    it does not know raises the same ``AttributeError``)."""
    shared = _ACTIVE.get(id(model))
    found = shared.by_path.get(path) if shared is not None else None
    return found if found is not None else model.get_submodule(path)


__all__ = ["Walk", "submodule", "walk", "walked_once"]
