"""Masked statistics written as tensor ops: a mean or variance across pruned channels.

Llama, Qwen, Mistral, Gemma, OLMo and T5 write RMSNorm as
``x * rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)`` inside their own module, and some models
write LayerNorm as ``x - x.mean(-1, keepdim=True)``. The shrunk model takes these statistics
over the kept channels; the masked model would take them over all, zeros included. So while
masks are registered, each such call (noted ``channel_stats`` by the ``statistic`` rule) runs
on the kept channels only::

    x.pow(2).mean(-1, keepdim=True)  ->  x.pow(2).index_select(-1, kept).mean(-1, keepdim=True)

whatever the pruned channels hold. A weight standardised in ``forward()`` (timm's
``StdConv2d``: ``F.batch_norm(w.reshape(1, O, -1), training=True)``, noted ``weight_stats``)
is standardised over its kept columns in the same way, its pruned columns set to zero as in
the shrunk model, where they do not exist. A weight norm (``torch._weight_norm(v, g, dim)``,
noted ``weight_norm``) runs on the kept entries along ``dim`` only, the others zero: a pruned
row of ``v`` is zero, and ``0 / ||0||`` would be NaN. The call is recognised inside the module it ran in (a
``TorchFunctionMode`` active only during that module's own forward, not its children's) by
the op, the reduced dims and the input's sizes along the pruned dims. Two calls of one module
that look alike but keep different channels cannot be told apart: neither is masked, and the
dry run leaves their groups whole.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._walk import submodule
from ..groups.context import CHANNEL_STATS
from ..groups.rules.parametrized import WEIGHT_NORM
from ..groups.rules.reduction import STATISTICS, reduced_dims
from ..groups.rules.weights import WEIGHT_STATS
from ..trace.opnames import canonical_name
from .plan import PruningPlan
from .scope import ModuleScope

Key = tuple  # (op, ndim, reduced dims, ((dim, size), ...) of the pruned dims)


@dataclasses.dataclass(frozen=True)
class MaskedStatistic:
    """One statistic call to take over kept channels: where it runs, how to recognise it."""

    module: str                                  # path of the module whose forward makes the call
    key: Key
    kept: tuple[tuple[int, torch.Tensor], ...]   # (dim, kept indices) per pruned dim


def _masked_statistic(plan: PruningPlan, node: str) -> MaskedStatistic | None:
    """The masked form of statistic call ``node``, or None when the plan prunes none of its channels."""
    graph = plan.groups.graph
    attrs = graph.nodes[node]
    x = attrs["args"][0] if attrs["args"] else attrs["kwargs"]["input"]
    shape = graph.nodes[x.node]["out_shapes"][x.index]
    dims = reduced_dims(attrs["op"], attrs["args"], attrs["kwargs"], len(shape))
    surviving = plan.surviving(x.node, x.index)
    kept = tuple((d, torch.as_tensor(np.flatnonzero(surviving[d]))) for d in dims
                 if d in surviving and not surviving[d].all())
    if not kept:
        return None
    key = (attrs["op"], len(shape), dims, tuple((d, shape[d]) for d, _ in kept))
    return MaskedStatistic(attrs["module"], key, kept)


def _standardised_weight(plan: PruningPlan, node: str) -> MaskedStatistic | None:
    """The masked form of the ``batch_norm`` at ``node`` that standardises a conv weight
    row by row: over the kept columns (each column's kernel taps with it)."""
    graph = plan.groups.graph
    attrs = graph.nodes[node]
    flat = graph.nodes[attrs["args"][0].node]
    param = graph.nodes[flat["args"][0].node]["target"]
    keep = plan.members.get((param, 1))
    if keep is None:
        return None
    shape = tuple(flat["out_shapes"][0])
    columns = np.repeat(keep, shape[2] // len(keep))
    return MaskedStatistic(attrs["module"], ("batch_norm", 3, (0, 2), ((2, shape[2]),)),
                           ((2, torch.as_tensor(np.flatnonzero(columns))),))


def _normalised_weight(plan: PruningPlan, node: str) -> MaskedStatistic | None:
    """The masked form of the ``_weight_norm`` at ``node``: over the kept entries along its dim."""
    attrs = plan.groups.graph.nodes[node]
    v, dim = attrs["args"][0], _norm_dim(attrs["args"], attrs["kwargs"])
    keep = plan.members.get((plan.groups.graph.nodes[v.node]["target"], dim))
    if keep is None:
        return None
    return MaskedStatistic(attrs["module"], ("_weight_norm", len(attrs["out_shapes"][0]), (dim,), ((dim, len(keep)),)),
                           ((dim, torch.as_tensor(np.flatnonzero(keep))),))


def _norm_dim(args: tuple, kwargs: dict) -> int:
    return kwargs["dim"] if "dim" in kwargs else args[2]


def _noted(plan: PruningPlan, kind: str) -> dict[str, None]:
    return dict.fromkeys(node for g in plan.groups if g.center in plan.kept for node in g.noted_at.get(kind, ()))


def masked_statistics(plan: PruningPlan) -> list[MaskedStatistic]:
    """Every statistic call the plan's pruned groups were noted at, except ambiguous ones."""
    graph = plan.groups.graph
    calls = [(node, _masked_statistic) for node in _noted(plan, CHANNEL_STATS) if graph.nodes[node]["op"] in STATISTICS]
    calls += [(node, _standardised_weight) for node in _noted(plan, WEIGHT_STATS)]
    calls += [(node, _normalised_weight) for node in _noted(plan, WEIGHT_NORM)]
    found: dict[tuple[str, Key], MaskedStatistic | None] = {}
    for node, masked in calls:
        stat = masked(plan, node)
        if stat is None:
            continue
        where = (stat.module, stat.key)
        same = where not in found or (found[where] is not None and _same_kept(found[where], stat))
        found[where] = stat if same else None
    return [s for s in found.values() if s is not None]


def _same_kept(a: MaskedStatistic, b: MaskedStatistic) -> bool:
    return all(da == db and torch.equal(ka, kb) for (da, ka), (db, kb) in zip(a.kept, b.kept))


class _MaskedStatisticMode(TorchFunctionMode):
    """Takes the known statistics over kept channels while its module's own code runs."""

    def __init__(self, scope: "_Scope") -> None:
        super().__init__()
        self.scope = scope

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if self.scope.depth == 0:
            kept = self.scope.kept_of(func, args, kwargs)
            rewrite = _REWRITES.get(self.scope.names.get(func))
            if kept is not None and rewrite is not None:
                return rewrite(func, args, kwargs, kept)
            if kept is not None:
                x = args[0]
                for dim, index in kept:
                    x = x.index_select(dim, index.to(x.device))
                return func(x, *args[1:], **kwargs)
        return func(*args, **kwargs)


def _over_kept(func, args: tuple, kwargs: dict, kept) -> torch.Tensor:
    """A standardised weight computed over the kept columns; the pruned ones are zero."""
    (dim, index), = kept
    x = args[0]
    index = index.to(x.device)
    out = torch.zeros_like(x)
    return out.index_copy(dim, index, func(x.index_select(dim, index), *args[1:], **kwargs))


def _rows_kept(func, args: tuple, kwargs: dict, kept) -> torch.Tensor:
    """A weight norm computed on the kept entries of ``v`` and ``g`` along its dim; the
    others are zero."""
    (dim, index), = kept
    v, g = args[0], args[1]
    index = index.to(v.device)
    out = torch.zeros_like(v)
    return out.index_copy(dim, index, func(v.index_select(dim, index), g.index_select(dim, index), *args[2:], **kwargs))


# The dims a call's statistics keep apart, for calls that are not reductions: op -> dims
_DIMS = {"batch_norm": lambda args, kwargs: (0, 2), "_weight_norm": lambda args, kwargs: (_norm_dim(args, kwargs),)}
# Calls rewritten as a whole rather than fed their kept channels: op -> rewrite
_REWRITES = {"batch_norm": _over_kept, "_weight_norm": _rows_kept}


class _Scope(ModuleScope):
    """One module's statistics; ``depth`` counts its children running (their calls are theirs)."""

    def __init__(self, stats: list[MaskedStatistic]) -> None:
        super().__init__()
        self.table = {s.key: s.kept for s in stats}
        self.ops = {s.key[0] for s in stats}
        self.names: dict[Any, str] = {}
        self.depth = 0

    def kept_of(self, func, args: tuple, kwargs: dict):
        op = self.names.get(func)
        if op is None:
            op = self.names[func] = canonical_name(func).op
        if op not in self.ops or not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        dims = _DIMS[op](args, kwargs) if op in _DIMS else reduced_dims(op, args, kwargs, x.dim())
        for key_op, ndim, key_dims, sizes in self.table:
            if (key_op, ndim, key_dims) == (op, x.dim(), dims) and all(x.shape[d] == n for d, n in sizes):
                return self.table[(key_op, ndim, key_dims, sizes)]
        return None

    def make_mode(self) -> _MaskedStatisticMode:
        return _MaskedStatisticMode(self)

    def child_enter(self, module: nn.Module, args: Any) -> None:
        self.depth += 1

    def child_leave(self, module: nn.Module, args: Any, out: Any) -> None:
        self.depth -= 1


def attach_masked_statistics(model: nn.Module, stats: list[MaskedStatistic]) -> list:
    """Hook every module that takes one of ``stats`` (and its children); returns the handles."""
    by_module: dict[str, list[MaskedStatistic]] = {}
    for stat in stats:
        by_module.setdefault(stat.module, []).append(stat)
    handles = []
    for path, found in by_module.items():
        module = submodule(model, path)
        scope = _Scope(found)
        handles += scope.attach(module)
        for child in module.children():
            handles.append(child.register_forward_pre_hook(scope.child_enter, prepend=True))
            handles.append(child.register_forward_hook(scope.child_leave, always_call=True))
    return handles


__all__ = ["MaskedStatistic", "attach_masked_statistics", "masked_statistics"]
