"""Physically remove pruned channels: slice parameters and buffers, fix layer attributes.

Everything is computed before anything changes; :class:`Shrunk` keeps what was replaced so
a failed check can put the model back exactly as it was.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, TypeVar

import numpy as np
import torch
from torch import nn

from .._walk import submodule, walk
from ..groups import ChannelGroups
from ..masks.plan import PruningPlan
from ..trace.caches import drop_derived
from .attributes import describe, size_attribute_changes
from .experts import expert_count_changes
from .parametrized import parametrized_layers, weight_readable
from .resize import needs_resizer, resizer_for

K = TypeVar("K")
log = logging.getLogger("pruneconf")

TAGS = {nn.modules.conv._ConvNd: "CONV", nn.Linear: "FC", nn.modules.batchnorm._NormBase: "BN",
        nn.GroupNorm: "GN", nn.LayerNorm: "LN", nn.Embedding: "EMB", nn.PReLU: "PRELU"}
# ``_flat_weights``: the parameter list recurrent layers run on, rebuilt by their resizer.
RESTORED_PRIVATE = ("_flat_weights",)


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (submodule(model, path) if path else model), attr


def unsupported_groups(model: nn.Module, groups: ChannelGroups) -> dict[str, str]:
    """Prunable groups with a parameter that cannot be sliced consistently, with the reason.

    Each parameter is looked at once, however many groups it belongs to (a DenseNet layer
    reads a concatenation of every earlier group in its block)."""
    why: dict[str, str | None] = {}
    for name in {m.param for g in groups.prunable for m in g.members}:
        module, _ = owner(model, name)
        unsupported = needs_resizer(module) and resizer_for(module) is None
        why[name] = f"cannot resize {type(module).__name__} layers yet ('{name}')" if unsupported else None
    out = {}
    for g in groups.prunable:
        reason = next((why[m.param] for m in g.members if why[m.param]), None)
        if reason:
            out[g.center] = reason
    return out


@dataclasses.dataclass
class Shrunk:
    """What :func:`shrink` replaced, to undo it."""

    model: nn.Module
    replaced: list[tuple[nn.Module, str, Any, bool]]  # module, attr, old value, is_param
    attrs: list[tuple[nn.Module, dict]]
    set_attrs: list[tuple[nn.Module, str]]  # size attributes set: module, ``name: old -> new``

    def log(self) -> None:
        """Log every layer's change, ``[CONV] layer1.0.conv1: output 64 -> 32``: done after
        the fact, so a dry run that keeps its shrunk model reports like apply."""
        if not log.isEnabledFor(logging.INFO):
            return
        path = walk(self.model).path_of
        for module, change in self.set_attrs:
            log.info("[ATTR] %s.%s", path.get(id(module), type(module).__name__), change)
        for module, old in self.attrs:
            _log_change(path.get(id(module), "?"), module, old)

    def undo(self) -> None:
        for module, attr, value, is_param in reversed(self.replaced):
            if is_param:
                module._parameters[attr] = value
            else:
                module._buffers[attr] = value
        for module, old in self.attrs:
            for key, value in old.items():  # sizes a resizer changed (public attributes)
                restored = not key.startswith("_") or key in RESTORED_PRIVATE
                if restored and getattr(module, key, value) is not value:
                    setattr(module, key, value)
        drop_derived(self.model)


def _tag(module: nn.Module) -> str:
    for cls, tag in TAGS.items():
        if isinstance(module, cls):
            return tag
    return type(module).__name__.upper()


def slicing_order(keeps: Mapping[K, np.ndarray]) -> list[tuple[K, np.ndarray]]:
    """``keeps`` (per key, the positions a dim keeps) in the order to slice them: per-row (2-D)
    keeps first, since they index the rows (experts, a grouped conv's output rows) as they were
    before any is dropped; then by key. Apply, timing copies and streamed reads all slice so."""
    return sorted(keeps.items(), key=lambda kv: (kv[1].ndim == 1, kv[0]))


def kept_positions(tensor: torch.Tensor, dim: int, keep) -> torch.Tensor:
    """``tensor`` without the positions ``keep`` drops along ``dim``; a 2-D ``keep`` has a row
    per index of dim 0 (an expert of a stacked tensor, an output row of a grouped conv), each
    keeping the same number of its own positions."""
    if keep.ndim == 1:
        return tensor.index_select(dim, torch.as_tensor(keep.nonzero()[0], device=tensor.device))
    rows = [row.nonzero()[0] for row in keep]
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"experts stacked in one tensor must keep equal widths, not {[len(r) for r in rows]}")
    index = torch.as_tensor(np.stack(rows), device=tensor.device)
    shape = [1] * tensor.dim()
    shape[0], shape[dim] = index.shape
    size = list(tensor.shape)
    size[dim] = index.shape[1]
    return tensor.gather(dim, index.reshape(shape).expand(size))


def _slots(model: nn.Module) -> dict[str, tuple[nn.Module, str, torch.Tensor, bool]]:
    """Every parameter and buffer by name (shared ones under each name): ``(module, attr,
    tensor, is_param)``, in one walk of the modules."""
    out = {}
    for path, module in walk(model).items:
        prefix = path + "." if path else ""
        for table, is_param in ((module._parameters, True), (module._buffers, False)):
            for attr, tensor in table.items():
                if tensor is not None:
                    out[prefix + attr] = (module, attr, tensor, is_param)
    return out


_ONE_GATHER = 1 << 24  # elements: a tensor this large cut along dims 0 and 1 is taken in one gather


def cut(tensor: torch.Tensor, keeps: Mapping[int, np.ndarray],
        orders: Mapping[int, np.ndarray] | None = None) -> torch.Tensor:
    """``tensor`` without the positions ``keeps[dim]`` drops along each dim, each dim then put
    in ``orders[dim]`` where a channel shuffle reorders it. Apply, timing copies and streamed
    reads all cut through here, so they slice alike.

    A tensor of at least :data:`_ONE_GATHER` elements cut along dims 0 and 1 (1-D keeps, no
    reorder) is taken in one gather: two ``index_select`` hold a rows-only copy between them,
    which held vgg16's prune 205 MB higher and spent half its time on fresh pages. Below that
    the two selects are faster, and stay."""
    orders = orders or {}
    tensor = tensor.detach()
    if set(keeps) == {0, 1} and tensor.numel() >= _ONE_GATHER and not orders \
            and all(k.ndim == 1 for k in keeps.values()):
        rows, columns = (torch.as_tensor(keeps[d].nonzero()[0], device=tensor.device) for d in (0, 1))
        return tensor[rows[:, None], columns]
    for dim, keep in slicing_order(keeps):
        tensor = kept_positions(tensor, dim, keep)
        if dim in orders:
            tensor = tensor.index_select(dim, torch.as_tensor(orders[dim], device=tensor.device))
    return tensor


def cuts_by_name(plan: PruningPlan) -> dict[str, tuple[dict[int, np.ndarray], dict[int, np.ndarray]]]:
    """The plan's keeps and shuffle orders per tensor name: ``{name: (keeps, orders)}``; an
    order only on a dim that is cut (a group that keeps every channel moves none)."""
    out: dict[str, tuple[dict, dict]] = {}
    for (name, dim), keep in plan.members.items():
        out.setdefault(name, ({}, {}))[0][dim] = keep
    for (name, dim), order in plan.orders.items():
        if (name, dim) in plan.members:
            out[name][1][dim] = order
    return out


def shrink(model: nn.Module, plan: PruningPlan, log_changes: bool = True) -> Shrunk:
    """Slice every parameter and buffer the plan prunes and update its layer's attributes.

    The tensors replaced are left untouched (slicing makes new ones), so :meth:`Shrunk.undo`
    puts the model back bit for bit."""
    slots = _slots(model)
    sliced: dict[int, torch.Tensor] = {}  # by id: a tensor shared under several names once
    for name, (keeps, orders) in sorted(cuts_by_name(plan).items()):
        tensor = slots[name][2]
        sliced[id(tensor)] = cut(sliced.get(id(tensor), tensor), keeps, orders)
    replaced, touched = [], {}
    with torch.no_grad():
        for module, attr, tensor, is_param in slots.values():
            if id(tensor) not in sliced:
                continue
            touched.setdefault(id(module), (module, dict(module.__dict__)))
            new = sliced[id(tensor)]
            if is_param:
                if not isinstance(new, nn.Parameter):
                    new = sliced[id(tensor)] = nn.Parameter(new, requires_grad=tensor.requires_grad)
                replaced.append((module, attr, module._parameters[attr], True))
                module._parameters[attr] = new
            else:
                replaced.append((module, attr, module._buffers[attr], False))
                module._buffers[attr] = new
    for layer in parametrized_layers(model, touched):  # its weight lives in its parametrizations
        touched.setdefault(id(layer), (layer, dict(layer.__dict__)))
    set_attrs = []
    for module, name, value in size_attribute_changes(model, plan) + expert_count_changes(model, plan):
        touched.setdefault(id(module), (module, dict(module.__dict__)))
        set_attrs.append((module, describe(module, name, value)))
        setattr(module, name, value)
    shrunk = Shrunk(model, replaced, list(touched.values()), set_attrs)
    for module, old in touched.values():
        resize = resizer_for(module)
        if resize is not None:
            with weight_readable(module):
                resize(module, old)
    drop_derived(model)  # what the model kept from its old parameters (timm's attention bias cache)
    if log_changes:
        shrunk.log()
    return shrunk


def _log_change(name: str, module: nn.Module, old: dict) -> None:
    pairs = [("input", ("in_channels", "in_features", "input_size")),
             ("output", ("out_channels", "out_features")),
             ("channel", ("num_features", "num_channels", "embedding_dim", "num_parameters")),
             ("hidden", ("hidden_size",)), ("projection", ("proj_size",))]
    for label, keys in pairs:
        for key in keys:
            if key in old and getattr(module, key) != old[key]:
                log.info("[%s] %s: %s %s -> %s", _tag(module), name, label, old[key], getattr(module, key))
