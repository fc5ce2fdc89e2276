"""Sizes model code reads from a tensor's shape, and the reshapes that pass them on.

``B, N, C = x.shape`` … ``y.transpose(1, 2).reshape(B, N, C)`` (timm's EVA, CaiT, XCiT,
PVT attention): the reshape's ``C`` is ``x``'s width at run time, so after pruning ``y``
must have as many channels as ``x`` has then. The trace sees plain ints, not where they
came from, so it matches by value, and only within one module call: a reshape's size that
equals a dim of a tensor whose shape that same call read (``x.shape``, ``x.size(-1)``)
names that tensor and dim. Only a read tensor's last dim counts, the width of the
channels-last activations this serves: its batch and tokens would otherwise match by chance
(a batch of 2 the literal ``2`` that splits keys from values, 16 tokens a head dim of 16).
The channel rule (:mod:`pruneconf.groups.rules.read_sizes`)
decides what the match means.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .refs import Ref
from .where import caller_names

SHAPE_READS = ("shape", "size")
RESHAPES = ("view", "reshape")
Reads = dict[int, list[tuple[Ref, tuple[int, ...]]]]  # call depth -> (tensor, shape) read there


def new_call(reads: Reads, depth: int) -> None:
    """A module call at ``depth`` starts: what a sibling call read there is not its own."""
    reads[depth] = []


def note_read(reads: Reads, depth: int, op: str, args: tuple, lookup: Callable[[torch.Tensor], Ref | None]) -> None:
    """Remember ``x.shape`` / ``x.size(...)`` of a traced tensor, read by the call at ``depth``."""
    if op not in SHAPE_READS or not args or not isinstance(args[0], torch.Tensor):
        return
    ref = lookup(args[0])
    if ref is not None:
        reads.setdefault(depth, []).append((ref, tuple(args[0].shape)))


def sized_by(reads: Reads, depth: int, op: str, args: tuple, module: Any) -> dict[int, list[tuple[Ref, int]]]:
    """For a reshape at ``depth``: ``{output dim: [(tensor, dim), ...]}`` for every size it
    was given (not ``-1``, not 1) that equals the last dim of a shape this call read,
    unless the calling function reads an attribute of ``module`` that holds that size
    (``reshape(B, N, self.attn_dim)``, or ``size_out = x.size()[:-1] + (self.nf,)`` a line
    before its ``view``): apply updates the attribute instead."""
    if op not in RESHAPES or len(args) < 2:
        return {}
    sizes: Any = args[1:]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    seen = reads.get(depth, [])
    found: dict[int, list[tuple[Ref, int]]] = {}
    for j, n in enumerate(sizes):
        if type(n) is int and n > 1:
            hits = [(ref, d) for ref, shape in seen for d, m in enumerate(shape) if 0 < d == len(shape) - 1 and m == n]
            if hits:
                found[j] = hits
    if found and module is not None:
        named = _named_sizes(module, caller_names(2))
        found = {j: hits for j, hits in found.items() if sizes[j] not in named}
    return found


def _named_sizes(module: Any, names: tuple[str, ...]) -> set[int]:
    """The int attributes of ``module`` among the attribute ``names`` a function reads."""
    return {value for name, value in vars(module).items() if type(value) is int and name in names}


__all__ = ["new_call", "note_read", "sized_by"]
