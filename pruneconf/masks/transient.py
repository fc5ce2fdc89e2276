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
from typing import Iterator

import torch
from torch import nn

from .._walk import walk
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
    for path, entries in by_scope.items():
        module = modules[path]
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
