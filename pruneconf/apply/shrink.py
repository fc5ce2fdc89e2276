"""Physically remove pruned channels: slice parameters and buffers, fix layer attributes.

Everything is computed before anything changes; :class:`Shrunk` keeps what was replaced so
a failed check can put the model back exactly as it was.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable

import torch
from torch import nn

from ..masks.plan import PruningPlan, model_tensors
from .resize import needs_resizer, resizer_for

log = logging.getLogger("pruneconf")

TAGS = {nn.modules.conv._ConvNd: "CONV", nn.Linear: "FC", nn.modules.batchnorm._NormBase: "BN",
        nn.GroupNorm: "GN", nn.LayerNorm: "LN", nn.Embedding: "EMB", nn.PReLU: "PRELU"}
SIZE_ATTRS = ("in_channels", "out_channels", "in_features", "out_features", "num_features",
              "num_channels", "embedding_dim", "num_parameters")
RESTORED = ("groups", "num_groups", "normalized_shape", "num_embeddings", "in1_features", "in2_features")


def owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def unsupported_layer(model: nn.Module, params: list[str]) -> str | None:
    """Why these parameters cannot be sliced consistently, or None."""
    for name in params:
        module, _ = owner(model, name)
        if needs_resizer(module) and resizer_for(module) is None:
            return f"cannot resize {type(module).__name__} layers yet ('{name}')"
    return None


def unresizable_norm(model: nn.Module, graph: Any, nodes: Iterable[str]) -> str | None:
    """Why the normalised shape of these norm calls (graph nodes) would not shrink, or None.

    Resizing updates ``normalized_shape`` of LayerNorm/RMSNorm layers (subclasses too, such
    as torchvision's ``LayerNorm2d``); a norm called from other code passes whatever shape
    that code computes, which may be a constant.
    """
    for node in nodes:
        path = graph.nodes[node]["module"]
        module = model.get_submodule(path)
        if not isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            return (f"'{graph.nodes[node]['op']}' called in '{path or '<root>'}' ({type(module).__name__}), "
                    f"not in a LayerNorm/RMSNorm layer: its normalized_shape cannot be resized")
    return None


@dataclasses.dataclass
class Shrunk:
    """What :func:`shrink` replaced, to undo it."""

    replaced: list[tuple[nn.Module, str, Any, bool]]  # module, attr, old value, is_param
    attrs: list[tuple[nn.Module, dict]]

    def undo(self) -> None:
        for module, attr, value, is_param in reversed(self.replaced):
            if is_param:
                module._parameters[attr] = value
            else:
                module._buffers[attr] = value
        for module, old in self.attrs:
            for key in SIZE_ATTRS + RESTORED:
                if key in old:
                    setattr(module, key, old[key])


def _tag(module: nn.Module) -> str:
    for cls, tag in TAGS.items():
        if isinstance(module, cls):
            return tag
    return type(module).__name__.upper()


def shrink(model: nn.Module, plan: PruningPlan, log_changes: bool = True) -> Shrunk:
    """Slice every parameter and buffer the plan prunes and update its layer's attributes."""
    tensors = model_tensors(model)
    sliced: dict[int, torch.Tensor] = {}  # by id: a shared parameter is sliced once
    for (name, dim), keep in sorted(plan.members.items()):
        tensor = tensors[name]
        index = torch.as_tensor(keep.nonzero()[0], device=tensor.device)
        sliced[id(tensor)] = sliced.get(id(tensor), tensor.detach()).index_select(dim, index)
    replaced, touched = [], {}
    with torch.no_grad():
        for name, tensor in tensors.items():
            if id(tensor) not in sliced:
                continue
            module, attr = owner(model, name)
            touched.setdefault(id(module), (module, dict(module.__dict__)))
            new = sliced[id(tensor)].clone()
            if attr in module._parameters:
                if not isinstance(sliced[id(tensor)], nn.Parameter):
                    sliced[id(tensor)] = nn.Parameter(new, requires_grad=tensor.requires_grad)
                replaced.append((module, attr, module._parameters[attr], True))
                module._parameters[attr] = sliced[id(tensor)]
            else:
                replaced.append((module, attr, module._buffers[attr], False))
                module._buffers[attr] = new
    shrunk = Shrunk(replaced, list(touched.values()))
    path = {id(m): n for n, m in model.named_modules()}
    for module, old in touched.values():
        resize = resizer_for(module)
        if resize is not None:
            resize(module, old)
        if log_changes:
            _log_change(path.get(id(module), "?"), module, old)
    return shrunk


def _log_change(name: str, module: nn.Module, old: dict) -> None:
    pairs = [("input", ("in_channels", "in_features")), ("output", ("out_channels", "out_features")),
             ("channel", ("num_features", "num_channels", "embedding_dim", "num_parameters"))]
    for label, keys in pairs:
        for key in keys:
            if key in old and getattr(module, key) != old[key]:
                log.info("[%s] %s: %s %s -> %s", _tag(module), name, label, old[key], getattr(module, key))
