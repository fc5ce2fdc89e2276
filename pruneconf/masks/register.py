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


class Masks:
    """Masks registered on a model; :meth:`remove` takes every hook away again."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor],
                 norms: list[MaskedNorm] | None = None, stats: list[MaskedStatistic] | None = None,
                 experts: Mapping[str, ExpertDrop] | None = None) -> None:
        self.model = model
        self.masks = masks
        self.norms = norms or []
        self.stats = stats or []
        self.experts = experts or {}
        self._handles: list = []
        tensors = model_tensors(model)
        self._params = {name: tensors[name] for name in masks}

    def enforce(self) -> None:
        """Zero every masked slice (done before each forward)."""
        with torch.no_grad():
            for name, mask in self.masks.items():
                param = self._params[name]
                param.mul_(mask.to(device=param.device, dtype=param.dtype))

    def _attach(self) -> None:
        self.enforce()
        for name, mask in self.masks.items():
            param = self._params[name]
            if not (isinstance(param, nn.Parameter) and param.requires_grad):
                continue
            if is_dtensor(param):
                self._handles.append(param.register_post_accumulate_grad_hook(functools.partial(_mask_grad, mask)))
            else:
                self._handles.append(param.register_hook(
                    lambda grad, m=mask: grad * m.to(device=grad.device, dtype=grad.dtype)))
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


def _mask_grad(mask: torch.Tensor, param: torch.Tensor) -> None:
    param.grad.mul_(mask)


def _shaped_like(mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``mask`` as ``param`` holds its values: the same shard of it on this rank (a DTensor with
    the parameter's mesh and placements, cut locally: every rank built the same mask), in the
    parameter's dtype and on its device."""
    if not is_dtensor(param):
        return mask
    from torch.distributed.tensor import distribute_tensor

    local = mask.to(device=param.device, dtype=param.dtype)
    return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)


def mask_tensors(plan: PruningPlan, model: nn.Module) -> dict[str, torch.Tensor]:
    """One 0/1 tensor per pruned parameter (buffers are left alone: their channel is cut off);
    for a sharded (DTensor) parameter, this rank's shard of it."""
    params = dict(model.named_parameters(remove_duplicate=False))
    masks: dict[str, torch.Tensor] = {}
    for (name, dim), keep in plan.members.items():
        if name not in params:
            continue
        param = params[name]
        shape = [1] * param.dim()
        shape[dim] = keep.shape[-1]
        if keep.ndim == 2:  # a row per expert of a stacked parameter
            shape[0] = keep.shape[0]
        mask = torch.as_tensor(keep.astype(np.float32)).reshape(shape)
        masks[name] = masks[name] * mask if name in masks else mask.expand(param.shape).clone()
    return {name: _shaped_like(mask, params[name]) for name, mask in masks.items()}


def register_masks(model: nn.Module, plan: PruningPlan) -> Masks:
    """Hold the channels ``plan`` prunes at zero while the model trains."""
    masks = Masks(model, mask_tensors(plan, model), masked_norms(plan), masked_statistics(plan), plan.experts)
    masks._attach()
    return masks
