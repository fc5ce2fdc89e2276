"""Pruning under ``torch.distributed``: every rank must shrink the very same model.

DDP keeps parameters in step, but buffers such as BatchNorm statistics are updated from
each rank's own batches; before shrinking, rank ``src``'s parameters and buffers are
broadcast so all ranks apply identical masks to identical tensors. A model sharded with
FSDP2 cannot be shrunk in place (FSDP2 owns its parameters and their flat buffers): its
full state is gathered into an unsharded twin, which is then shrunk like any model.

Commands that try many recipes (``sensitivity``, ``sweep``) split their points across the
ranks of a ``torchrun`` launch: each rank computes its share, every rank receives every
share (:func:`gather_shares`), and rank 0 writes the files.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

from ._walk import walk
from .errors import PruneconfError


log = logging.getLogger(__name__)
T = TypeVar("T")


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of ranks; ``(0, 1)`` outside distributed runs."""
    if not distributed():
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


@contextlib.contextmanager
def torchrun_group() -> Iterator[None]:
    """A gloo process group for the block when launched by ``torchrun`` with more than one
    process (``WORLD_SIZE`` > 1); nothing otherwise. A group that already exists is used
    and left in place. Gloo: the ranks only exchange small results, on the CPU."""
    if distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        yield
        return
    torch.distributed.init_process_group("gloo")
    log.info("rank %d of %d", *rank_and_world())
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def gather_shares(work: Callable[[], T]) -> list[T]:
    """Every rank's ``work()``, in rank order, on every rank (``[work()]`` outside
    distributed runs). A rank whose work raised re-raises its error after the exchange and
    every other rank raises a :class:`PruneconfError` naming it, so no rank is left waiting
    for a rank that failed. Results travel pickled between the ranks of one launch."""
    if not distributed():
        return [work()]
    error: Exception | None = None
    try:
        outcome = (True, work())
    except Exception as exc:  # noqa: BLE001 - re-raised below, once every rank knows
        error, outcome = exc, (False, " ".join(f"{type(exc).__name__}: {exc}".split()))
    outcomes: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(outcomes, outcome)
    if error is not None:
        raise error
    failed = [(rank, message) for rank, (ok, message) in enumerate(outcomes) if not ok]
    if failed:
        raise PruneconfError(f"rank {failed[0][0]} failed: {failed[0][1]}")
    return [result for _, result in outcomes]


def broadcast_model(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (a no-op outside distributed runs)."""
    if not distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src)


@functools.lru_cache(maxsize=None)
def _dtensor_type() -> type | None:
    """DTensor's class, looked up once: a prune asks about every parameter several times."""
    if not torch.distributed.is_available():
        return None
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # before PyTorch 2.5 there is no public DTensor, hence no FSDP2
        return None
    return DTensor


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor: one shard per rank, as FSDP2 (``fully_shard``) keeps
    parameters (False on PyTorch builds without ``torch.distributed.tensor``)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)


def sharded(model: nn.Module) -> bool:
    """Whether any of ``model``'s parameters is sharded (FSDP2 or another DTensor API)."""
    return any(is_dtensor(p) for _, m in walk(model).items for p in m._parameters.values())


def copy_full_state(source: nn.Module, target: nn.Module) -> None:
    """Copy the sharded ``source``'s full parameters and buffers into ``target``, an unsharded
    model built the same way. Each sharded tensor is gathered once and copied at once, so only
    one full tensor exists beside ``target`` at a time. Every rank must call this (each
    gather is a collective); every rank's ``target`` then holds the same weights except for
    buffers, which FSDP2 leaves per rank (``Pruner.apply_masks`` broadcasts rank 0's)."""
    destination = target.state_dict()
    state = source.state_dict()
    if state.keys() != destination.keys():
        missing, extra = sorted(state.keys() - destination.keys()), sorted(destination.keys() - state.keys())
        raise PruneconfError(f"the unsharded model does not match the sharded one: it lacks {missing[:5]} "
                             f"and has {extra[:5]} in addition")
    for name, value in state.items():  # a DTensor's shape is the whole tensor's
        if value.shape != destination[name].shape:
            raise PruneconfError(f"the unsharded model's {name} is {tuple(destination[name].shape)}, "
                                 f"the sharded model's is {tuple(value.shape)}")
    with torch.no_grad():
        for name, value in state.items():
            destination[name].copy_(value.full_tensor() if is_dtensor(value) else value)
