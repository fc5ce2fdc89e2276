"""Pause Python's cyclic garbage collector while building large object graphs.

Tracing and grouping allocate many small, long-lived objects (records, refs, label
arrays). Each generation-2 collection scans all of them, which makes analysis of a
2,000-layer model quadratic; nothing we build has reference cycles that need collecting
mid-way, so collection waits until we are done.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
