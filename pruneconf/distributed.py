"""Pruning under ``torch.distributed``: every rank must shrink the very same model.

DDP keeps parameters in step, but buffers such as BatchNorm statistics are updated from
each rank's own batches; before shrinking, rank ``src``'s parameters and buffers are
broadcast so all ranks apply identical masks to identical tensors. A model sharded with
FSDP2 cannot be shrunk in place (FSDP2 owns its parameters and their flat buffers): its
full state is gathered into an unsharded twin, which is then shrunk like any model.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import PruneconfError


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_model(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (a no-op outside distributed runs)."""
    if not distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src)


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor: one shard per rank, as FSDP2 (``fully_shard``) keeps
    parameters (False on PyTorch builds without ``torch.distributed.tensor``)."""
    if not torch.distributed.is_available():
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # before PyTorch 2.5 there is no public DTensor, hence no FSDP2
        return False
    return isinstance(tensor, DTensor)


def sharded(model: nn.Module) -> bool:
    """Whether any of ``model``'s parameters is sharded (FSDP2 or another DTensor API)."""
    return any(is_dtensor(p) for p in model.parameters())


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
