"""Masked statistics: LayerNorm/RMSNorm over pruned channels, computed as the shrunk layer will.

Zeroing a pruned channel is not enough in front of a norm whose mean and variance run
across channels: the zeros would still count, so the masked model would differ from the
shrunk one. While masks are registered, each such norm call (noted ``channel_stats`` by
its channel rule) is computed over the kept channels only and gives 0 at pruned ones::

    out = zeros; out[..., kept] = layer_norm(x[..., kept], (k,), w[kept], b[kept], eps)

A GroupNorm with one group (PoolFormer's) normalises over channels and space, so it is
computed over the kept channels (dim 1) the same way. Several normalised dims are flattened first (a norm over ``(C1, C2)`` is the norm over
their ``C1*C2`` elements), so any mix of pruned and whole dims is exact. The call is
replaced by a ``TorchFunctionMode`` that is active only during the forward of the module
the norm ran in (entered by a forward pre-hook, left by an ``always_call`` forward hook, so
also on exceptions): the rest of the model pays nothing. It recognises the call by its
weight parameter (the rule blocks norms without one) and the normalised size; anything
else runs unchanged. Everything is differentiable: gradients reach the kept inputs and
affine parameters only, as in the shrunk model.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._walk import submodule
from ..groups.context import CHANNEL_STATS
from ..groups.rules.norm import NORM_OPS, normalized_dims

GROUP_NORM = "group_norm"  # with one group: a norm across channels (and space)
from ..trace.refs import Ref
from .plan import PruningPlan, model_tensors
from .scope import ModuleScope

# Positional parameters of torch.nn.functional.layer_norm / rms_norm (and torch.layer_norm).
_SIGNATURES = {"layer_norm": ("input", "normalized_shape", "weight", "bias", "eps"),
               "rms_norm": ("input", "normalized_shape", "weight", "eps"),
               GROUP_NORM: ("input", "num_groups", "weight", "bias", "eps")}
_DEFAULT_EPS = {"layer_norm": 1e-5, "rms_norm": None, GROUP_NORM: 1e-5}


@dataclasses.dataclass(frozen=True)
class MaskedNorm:
    """One norm call to compute over kept channels: where it runs and which elements it keeps."""

    module: str          # path of the module whose forward makes the call ("" is the model)
    weight: str          # the weight parameter that identifies the call
    kept: torch.Tensor   # indices kept among the flattened normalised elements, ascending


def _arg(attrs: dict, index: int, name: str, default: Any = None) -> Any:
    args, kwargs = attrs["args"], attrs["kwargs"]
    return args[index] if len(args) > index else kwargs.get(name, default)


def _kept_along(plan: PruningPlan, x: Ref, dim: int, size: int) -> np.ndarray:
    """Which positions along ``dim`` of tensor ``x`` survive the plan (all groups spanning it)."""
    return plan.surviving(x.node, x.index).get(dim, np.ones(size, dtype=bool))


def _masked_norm(plan: PruningPlan, node: str) -> MaskedNorm | None:
    """The masked form of norm call ``node``, or None when the plan prunes none of its channels."""
    graph = plan.groups.graph
    attrs = graph.nodes[node]
    x = _arg(attrs, 0, "input")
    shape = graph.nodes[x.node]["out_shapes"][x.index]
    if attrs["op"] == GROUP_NORM:
        keep = _kept_along(plan, x, 1, shape[1])
    else:
        k = len(normalized_dims(_arg(attrs, 1, "normalized_shape")))
        per_dim = [_kept_along(plan, x, d, shape[d]) for d in range(len(shape) - k, len(shape))]
        keep = functools.reduce(np.multiply.outer, per_dim).reshape(-1)
    if keep.all():
        return None
    weight = graph.nodes[_arg(attrs, 2, "weight").node]["target"]
    return MaskedNorm(attrs["module"], weight, torch.as_tensor(np.flatnonzero(keep)))


def masked_norms(plan: PruningPlan) -> list[MaskedNorm]:
    """Every norm call the plan's pruned groups were noted at (``channel_stats``), once each."""
    nodes = dict.fromkeys(node for g in plan.groups if g.center in plan.kept
                          for node in g.noted_at.get(CHANNEL_STATS, ())
                          if plan.groups.graph.nodes[node]["op"] in (*NORM_OPS, GROUP_NORM))
    found: dict[tuple[str, str], MaskedNorm] = {}
    for node in nodes:
        norm = _masked_norm(plan, node)
        if norm is None:
            continue
        found[(norm.module, norm.weight)] = norm  # calls sharing a weight share its channels
    return list(found.values())


def _group_norm_over(kept: torch.Tensor, bound: dict) -> torch.Tensor:
    """A one-group GroupNorm over the ``kept`` channels; 0 at the others."""
    x, weight, bias = bound["input"], bound.get("weight"), bound.get("bias")
    kept = kept.to(x.device)
    y = F.group_norm(x.index_select(1, kept), 1, weight.index_select(0, kept),
                     bias.index_select(0, kept) if bias is not None else None, bound.get("eps", 1e-5))
    return y.new_zeros(x.shape).index_copy(1, kept, y)


def _norm_over(op: str, kept: torch.Tensor, bound: dict) -> torch.Tensor:
    """``op`` over the ``kept`` elements of the normalised dims; 0 elsewhere."""
    if op == GROUP_NORM:
        return _group_norm_over(kept, bound)
    x = bound["input"]
    shape = normalized_dims(bound["normalized_shape"])
    flat = x.flatten(-len(shape)) if len(shape) > 1 else x
    kept = kept.to(x.device)
    n = (kept.numel(),)
    weight = bound.get("weight")
    weight = weight.flatten().index_select(0, kept) if weight is not None else None
    eps = bound.get("eps", _DEFAULT_EPS[op])
    if op == "layer_norm":
        bias = bound.get("bias")
        bias = bias.flatten().index_select(0, kept) if bias is not None else None
        y = F.layer_norm(flat.index_select(-1, kept), n, weight, bias, eps)
    else:
        y = F.rms_norm(flat.index_select(-1, kept), n, weight, eps)
    out = y.new_zeros(flat.shape).index_copy(flat.dim() - 1, kept, y)
    return out.unflatten(-1, shape) if len(shape) > 1 else out


class _MaskedNormMode(TorchFunctionMode):
    """Replaces the norm calls of known weights; every other call runs unchanged."""

    def __init__(self, kept: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.kept = kept  # id(weight) -> (weight, kept indices)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        op = getattr(func, "__name__", None)
        if op in _SIGNATURES:
            bound = dict(zip(_SIGNATURES[op], args), **kwargs)
            kept = self._kept_of(bound)
            if kept is not None:
                return _norm_over(op, kept, bound)
        return func(*args, **kwargs)

    def _kept_of(self, bound: dict) -> torch.Tensor | None:
        """Kept indices when the call's weight is a masked one and the input fits it (an input
        that does not fit runs unchanged, so torch reports the mismatch as usual)."""
        weight = bound.get("weight")
        entry = self.kept.get(id(weight))
        if entry is None or entry[0] is not weight or weight.dim() > bound["input"].dim():
            return None
        if "num_groups" in bound:
            fits = bound["num_groups"] == 1 and bound["input"].dim() > 1 and bound["input"].shape[1] == weight.numel()
        else:
            fits = bound["input"].shape[-weight.dim():] == weight.shape
        return entry[1] if fits else None


class _Scope(ModuleScope):
    """The norms of one module, recognised by their weight tensors."""

    def __init__(self, kept: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.kept = kept

    def make_mode(self) -> _MaskedNormMode:
        return _MaskedNormMode(self.kept)


def attach_masked_norms(model: nn.Module, norms: list[MaskedNorm]) -> list:
    """Hook every module that runs one of ``norms``; returns the hook handles."""
    tensors = model_tensors(model)
    scopes: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
    for norm in norms:
        weight = tensors[norm.weight]
        scopes.setdefault(norm.module, {})[id(weight)] = (weight, norm.kept)
    handles = []
    for path, kept in scopes.items():
        handles += _Scope(kept).attach(submodule(model, path))
    return handles


__all__ = ["MaskedNorm", "attach_masked_norms", "masked_norms"]
