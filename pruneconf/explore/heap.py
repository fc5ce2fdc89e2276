"""Time forwards that reuse their memory, so a timing does not depend on the process's history.

glibc's ``malloc`` serves a block over its mmap threshold (dynamic, at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``: a forward whose activations are larger asks the
kernel for zeroed pages on every call, and the threshold moves with what the process
allocated before. On the 2-core development VM this was nearly half of a batch-8 forward
(mobilenet_v2 197-226 ms, against 108-121 ms with the memory reused), and the same dense and
pruned models timed in four fresh processes gave pruned/dense ratios from 0.27 to 0.32: no
closed loop can hit a latency target within 10 % through that. With mmap off while timing,
every call after the warm-up reuses the heap, and the ratio was 0.39-0.41 in every process.

A deployment that reuses memory the same way (``MALLOC_MMAP_MAX_=0``, jemalloc or tcmalloc,
or PyTorch's ``THP_MEM_ALLOC_ENABLE=1``) runs at the measured speed; README says so.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
from typing import Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # glibc's malloc.h
_MMAP_MAX_DEFAULT = 65536
_DYNAMIC_CEILING = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit glibc


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (``mallopt`` is glibc's), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def timing_memory() -> str:
    """How timings here treat memory, recorded in latency tables: ``reused`` on glibc (see
    :func:`reused_memory`), ``allocator default`` elsewhere. A table recorded otherwise (or
    before this was recorded: empty) timed page faults that a reused heap does not have."""
    return "reused" if _glibc() is not None else "allocator default"


def memory_words(value: str) -> str:
    """A table's ``memory`` record in words, for messages."""
    return {"reused": "with memory reused", "allocator default": "under the allocator's defaults",
            "": "by an older pruneconf (page faults included)"}.get(value, repr(value))


@contextlib.contextmanager
def reused_memory() -> Iterator[bool]:
    """Within the block, freed memory stays in the heap for the next call (glibc only; elsewhere
    a no-op). Yields whether it applies. On exit, mmap is back on, at the thresholds glibc's own
    dynamic rule reaches after one large free (setting any of them fixes them from then on:
    there is no way back to "dynamic"), and the heap's free memory returns to the system."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield True
    finally:
        libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
        libc.mallopt(_M_MMAP_THRESHOLD, _DYNAMIC_CEILING)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * _DYNAMIC_CEILING)
        libc.malloc_trim(0)


__all__ = ["memory_words", "reused_memory", "timing_memory"]
