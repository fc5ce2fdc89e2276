"""Masks for finetuning: pruned channels held at exactly zero, in forward and in training.

Each pruned parameter slice is zeroed once, its gradient is masked by a tensor hook, and a
forward pre-hook on the model re-zeroes the slices before every forward. The first two keep
them at zero through any optimizer (SGD with momentum and weight decay, Adam: the update of
a zero weight with a zero gradient is zero); the third also covers optimizer state built
before the masks. Norms with statistics across pruned channels (LayerNorm, RMSNorm, and
means or variances written as tensor ops) are computed over the kept channels only
(:mod:`.norms`, :mod:`.stats`); routers never pick a masked expert (:mod:`.experts`).
Nothing is added to the model's
``state_dict``.

Under FSDP2 (``fully_shard``) a parameter is a DTensor holding one shard per rank: its
mask is distributed the same way, so each rank zeroes only its own shard. FSDP2 computes
gradients on gathered copies and writes the reduce-scattered shard into ``.grad``
without autograd, so a tensor hook on the shard would never run; FSDP2 does call the
shard's post-accumulate-grad hooks, which mask the gradient before any clipping or step.
"""
from __future__ import annotations

import functools
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..distributed import is_dtensor
from .experts import ExpertDrop, attach_router_masks
from .norms import MaskedNorm, attach_masked_norms, masked_norms
from .plan import PruningPlan, model_tensors
from .stats import MaskedStatistic, attach_masked_statistics, masked_statistics


def times_factors(factors: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``x`` times every factor, as a new tensor (``x`` is left alone). Only the first product
    allocates; the others multiply it in place where the shape allows (a masked forward
    multiplies every pruned weight, and each new weight-sized tensor costs a pass of page faults)."""
    out = x
    for factor in factors:
        if factor.device != x.device or factor.dtype != x.dtype:
            factor = factor.to(device=x.device, dtype=x.dtype)
        out = out.mul_(factor) if out is not x and _fits(factor.shape, out.shape) else out * factor
    return out


def _fits(factor: torch.Size, shape: torch.Size) -> bool:
    """Whether ``factor`` broadcasts to ``shape`` without growing it (``torch.broadcast_shapes``
    is written in Python and cost more than the product it guarded)."""
    return len(factor) <= len(shape) and all(f in (1, s) for f, s in zip(reversed(factor), reversed(shape)))


class Masks:
    """Masks registered on a model; :meth:`remove` takes every hook away again.

    Each parameter's mask is kept as its per-dim factors (a ``[O, 1, 1, 1]`` and a
    ``[1, I, 1, 1]`` 0/1 tensor for a conv pruned on both sides), not as a tensor of the
    parameter's size: masks then cost a fraction of the model instead of a second model."""

    def __init__(self, model: nn.Module, factors: dict[str, list[torch.Tensor]],
                 norms: list[MaskedNorm] | None = None, stats: list[MaskedStatistic] | None = None,
                 experts: Mapping[str, ExpertDrop] | None = None) -> None:
        self.model = model
        self.factors = factors
        self.norms = norms or []
        self.stats = stats or []
        self.experts = experts or {}
        self._handles: list = []
        tensors = model_tensors(model)
        self._params = {name: tensors[name] for name in factors}

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Each masked parameter's 0/1 mask in its full shape (built on each access)."""
        return {name: factors[0] if is_dtensor(factors[0]) else
                times_factors(factors, torch.ones((), dtype=torch.float32)).expand_as(self._params[name])
                for name, factors in self.factors.items()}

    def enforce(self) -> None:
        """Zero every masked slice (done before each forward)."""
        with torch.no_grad():
            for name, factors in self.factors.items():
                param = self._params[name]
                for factor in factors:
                    param.mul_(factor.to(device=param.device, dtype=param.dtype))

    def _attach(self) -> None:
        self.enforce()
        for name, factors in self.factors.items():
            param = self._params[name]
            if not (isinstance(param, nn.Parameter) and param.requires_grad):
                continue
            if is_dtensor(param):
                self._handles.append(param.register_post_accumulate_grad_hook(functools.partial(_mask_grad, factors)))
            else:
                self._handles.append(param.register_hook(lambda grad, f=factors: times_factors(f, grad)))
        # first of all forward pre-hooks: FSDP2's own gathers the shards the forward reads
        self._handles.append(self.model.register_forward_pre_hook(lambda module, args: self.enforce(),
                                                                  prepend=True))
        self._handles.extend(attach_masked_norms(self.model, self.norms))
        self._handles.extend(attach_masked_statistics(self.model, self.stats))
        self._handles.extend(attach_router_masks(self.model, self.experts))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _mask_grad(factors: list[torch.Tensor], param: torch.Tensor) -> None:
    for factor in factors:
        param.grad.mul_(factor)


def _sharded_like(factors: list[torch.Tensor], param: torch.Tensor) -> list[torch.Tensor]:
    """``factors`` as ``param`` holds its values. For a sharded (DTensor) parameter, one mask of
    its full shape distributed like it (cut locally: every rank built the same mask), in its
    dtype and on its device: a per-dim factor cannot broadcast against a shard."""
    if not is_dtensor(param):
        return factors
    from torch.distributed.tensor import distribute_tensor

    full = times_factors(factors, torch.ones(param.shape, dtype=param.dtype, device=param.device))
    return [distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)]


def mask_factors(plan: PruningPlan, params: Mapping[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per pruned parameter of ``params`` (a model's :func:`~.plan.model_tensors`), one
    broadcastable 0/1 tensor per pruned dim (buffers are left alone: their channel is cut
    off); for a sharded (DTensor) parameter, this rank's shard of its whole mask."""
    factors: dict[str, list[torch.Tensor]] = {}
    for (name, dim), keep in plan.members.items():
        if not isinstance(params.get(name), nn.Parameter):
            continue
        shape = [1] * params[name].dim()
        shape[dim] = keep.shape[-1]
        if keep.ndim == 2:  # a row per expert of a stacked parameter
            shape[0] = keep.shape[0]
        factors.setdefault(name, []).append(torch.as_tensor(keep.astype(np.float32)).reshape(shape))
    return {name: _sharded_like(f, params[name]) for name, f in factors.items()}


def register_masks(model: nn.Module, plan: PruningPlan) -> Masks:
    """Hold the channels ``plan`` prunes at zero while the model trains."""
    masks = Masks(model, mask_factors(plan, model_tensors(model)), masked_norms(plan), masked_statistics(plan), plan.experts)
    masks._attach()
    return masks
