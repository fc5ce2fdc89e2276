"""Name -> function tables: channel rules, MAC counters, layer resizers, ranking metrics.

Each extension point of pruneconf is one decorated function in one of these tables.
"""
from __future__ import annotations

from typing import Callable, Hashable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """A dict filled by a decorator; registering a second function for a key is an error."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, *keys: Hashable) -> Callable[[F], F]:
        def decorate(fn: F) -> F:
            for key in keys:
                if self.get(key, fn) is not fn:
                    raise ValueError(f"{self.what} for {key!r} is already {self[key].__name__}")
                self[key] = fn
            return fn
        return decorate
