"""The masked model's forward without touching the model: for the dry run and apply's check.

:func:`register_masks` zeroes the pruned slices in place, which is what finetuning needs but
would destroy the weights of any group the dry run then leaves whole. Here each pruned
parameter holds its masked values only while the module that reads it runs: a forward
pre-hook swaps the masked copy in (``param.data``, so the ``Parameter`` object, which norm
and router masks recognise, stays) and a forward hook swaps the original back. The scope of
a parameter is the innermost module containing every op the trace saw reading it, so a
parameter read by its parent (or tied to another layer) is swapped around the parent. At
most one scope's masked copies exist at a time instead of a second model.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from .._walk import walk
from ..trace.refs import Ref
from ..trace.caches import drop_derived
from .experts import attach_router_masks
from .norms import attach_masked_norms, masked_norms
from .plan import PruningPlan, model_tensors
from .register import mask_factors, times_factors
from .stats import attach_masked_statistics, masked_statistics


def _common_scope(paths: list[str]) -> str:
    """The innermost module path containing every one of ``paths`` ("" is the model)."""
    parts = [p.split(".") if p else [] for p in paths]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def read_scopes(plan: PruningPlan, names: list[str]) -> dict[str, str]:
    """For each parameter name, the module whose forward contains every traced read of it."""
    graph = plan.groups.graph
    readers: dict[str, list[str]] = {name: [] for name in names}
    for node, attrs in graph.nodes(data=True):
        if attrs.get("kind") == "param" and attrs.get("target") in readers:
            readers[attrs["target"]].extend(graph.nodes[s].get("module", "") for s in graph.successors(node))
    return {name: _common_scope(paths) for name, paths in readers.items()}


class _Swap:
    """Masked values in while one module runs, originals back after (re-entrant per parameter)."""

    def __init__(self, params: list[tuple[nn.Parameter, list[torch.Tensor]]]) -> None:
        self.params = params
        self.saved: list[list[torch.Tensor] | None] = []

    def enter(self, module: nn.Module, args) -> None:
        saved = []
        with torch.no_grad():
            for param, factors in self.params:
                saved.append(param.data)
                param.data = times_factors(factors, param.data)
        self.saved.append(saved)

    def leave(self, module: nn.Module, args, out) -> None:
        if self.saved:
            for (param, _), original in zip(self.params, self.saved.pop()):
                param.data = original


_SPATIAL_DIMS = {nn.Linear: 0, nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}  # after the channel dim


class _ActivationMask:
    """A layer's pruned output channels zeroed in its output, pruned input channels in its input."""

    def __init__(self, inputs: torch.Tensor | None, outputs: torch.Tensor | None, spatial: int) -> None:
        self.inputs, self.outputs, self.spatial = inputs, outputs, spatial
        self.shaped: dict = {}

    def _along_channels(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``mask`` shaped to multiply ``x`` along its channel dim (the one before the spatial
        dims: the last for a linear layer; dim 1 of a batched, dim 0 of an unbatched conv),
        made once per shape, dtype and device (the layers are small where hooks cost most)."""
        key = (id(mask), x.dim(), x.dtype, x.device)
        shaped = self.shaped.get(key)
        if shaped is None:
            shape = [1] * x.dim()
            shape[x.dim() - 1 - self.spatial] = -1
            shaped = self.shaped[key] = mask.to(dtype=x.dtype, device=x.device).reshape(shape)
        return shaped

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple | None:
        if self.inputs is None:
            return None
        if args:
            return (args[0] * self._along_channels(self.inputs, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "input": kwargs["input"] * self._along_channels(self.inputs, kwargs["input"])}

    def leave(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """In place: the layer's output is new, and no one else has seen it yet."""
        return out if self.outputs is None else out.mul_(self._along_channels(self.outputs, out))


def _along(factor: torch.Tensor, dim: int) -> torch.Tensor | None:
    """The 1-D mask ``factor`` applies along ``dim``, when it masks nothing else."""
    if all(size == 1 for d, size in enumerate(factor.shape) if d != dim):
        return factor.reshape(-1)
    return None


def activation_mask(module: nn.Module, factors: dict[int, list[torch.Tensor]]) -> _ActivationMask | None:
    """Activation masks equivalent to masking ``module``'s weight and bias by ``factors`` (by
    parameter id), or None when they would not be: not an exact linear or conv layer (a
    subclass may read its weight otherwise), a factor masking anything but whole rows or
    columns, a grouped conv's columns (each group reads its own inputs), or a bias not masked
    with its rows (a pruned channel of the masked layer would still output its bias)."""
    spatial = _SPATIAL_DIMS.get(type(module))
    if spatial is None:
        return None
    weight, bias = module.weight, module.bias
    if not set(factors) <= {id(weight), id(bias)}:
        return None
    rows, columns = [], []
    for factor in factors.get(id(weight), []):
        row, column = _along(factor, 0), _along(factor, 1)
        if row is not None:
            rows.append(row)
        elif column is not None:
            columns.append(column)
        else:
            return None
    if len(rows) > 1 or len(columns) > 1 or (columns and getattr(module, "groups", 1) != 1):
        return None
    bias_masks = [f.reshape(-1) for f in factors.get(id(bias), [])]
    if len(bias_masks) != (len(rows) if bias is not None else 0):
        return None
    if bias_masks and not torch.equal(bias_masks[0], rows[0]):
        return None
    return _ActivationMask(columns[0] if columns else None, rows[0] if rows else None, spatial)


def activation_sizes(graph, paths: set[str]) -> dict[str, int]:
    """Elements each module of ``paths`` read (its first argument) and wrote, over all its calls."""
    sizes = dict.fromkeys(paths, 0)
    for attrs in graph.nodes.values():
        path = attrs.get("module")
        if path not in sizes or attrs.get("kind") != "call":
            continue
        shapes = list(attrs["out_shapes"])
        first = attrs["args"][0] if attrs["args"] else None
        if isinstance(first, Ref):
            shapes.append(graph.nodes[first.node]["out_shapes"][first.index])
        sizes[path] += sum(math.prod(shape) for shape in shapes)
    return sizes


@contextlib.contextmanager
def masked_forward(model: nn.Module, plan: PruningPlan) -> Iterator[None]:
    """Within the block, ``model`` computes what it would with ``plan``'s masks registered;
    its parameters keep their values (and identities) throughout."""
    params = model_tensors(model)
    factors = mask_factors(plan, params)
    scopes = read_scopes(plan, list(factors))
    by_scope: dict[str, dict[int, tuple[nn.Parameter, list[torch.Tensor]]]] = {}
    for name, mine in factors.items():
        param = params[name]
        entry = by_scope.setdefault(scopes[name], {})
        previous = entry.get(id(param), (param, []))[1]
        entry[id(param)] = (param, previous + mine)  # a tied parameter, masked under each of its names
    handles, modules = [], walk(model).by_path
    sizes = activation_sizes(plan.groups.graph, {p for p in by_scope if type(modules[p]) in _SPATIAL_DIMS})
    for path, entries in by_scope.items():
        module = modules[path]
        masks = None
        if path in sizes and sizes[path] < module.weight.numel():  # a weight copy would move more
            masks = activation_mask(module, {key: factors for key, (_, factors) in entries.items()})
        if masks is not None:  # after the layer's own pre-hooks, before its forward hooks
            handles.append(module.register_forward_pre_hook(masks.enter, with_kwargs=True))
            handles.append(module.register_forward_hook(masks.leave, prepend=True))
            continue
        swap = _Swap(list(entries.values()))
        handles.append(module.register_forward_pre_hook(swap.enter, prepend=True))
        handles.append(module.register_forward_hook(swap.leave, always_call=True))
    handles.extend(attach_masked_norms(model, masked_norms(plan)))
    handles.extend(attach_masked_statistics(model, masked_statistics(plan)))
    handles.extend(attach_router_masks(model, plan.experts))
    drop_derived(model)  # tensors the model keeps from its parameters: computed masked here
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        drop_derived(model)


__all__ = ["masked_forward", "read_scopes"]
