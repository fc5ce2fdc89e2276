"""Pruning under ``torch.distributed``: every rank must shrink the very same model.

DDP keeps parameters in step, but buffers such as BatchNorm statistics are updated from
each rank's own batches; before shrinking, rank ``src``'s parameters and buffers are
broadcast so all ranks apply identical masks to identical tensors.
"""
from __future__ import annotations

import torch
from torch import nn


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def broadcast_model(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (a no-op outside distributed runs)."""
    if not distributed():
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            torch.distributed.broadcast(tensor.data, src)
