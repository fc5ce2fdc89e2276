"""Layers whose weight is computed in ``forward()`` by a parametrization or a weight-norm hook.

``torch.nn.utils.parametrize`` moves a layer's ``weight`` into
``layer.parametrizations.weight.original*`` (held by a ``ParametrizationList``) and makes
``layer.weight`` a property that computes it. The list holds no size of its own, but the
layer around it does (``in_channels``…), and no tensor of the layer itself shrinks: so the
layer is resized as soon as its parametrization's tensors are, from the computed weight's
new shape. The older hook form (``torch.nn.utils.weight_norm``) keeps the computed weight
in a plain attribute that its forward pre-hook refreshes: it is computed again from the
shrunk ``weight_g`` and ``weight_v`` before the layer's sizes are read from it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from .._walk import walk
from .resize import register_resizer


@register_resizer(parametrize.ParametrizationList)
def _parametrization_list(module: nn.Module, old: dict) -> None:
    """Holds no size: its layer is resized instead (:func:`parametrized_layers`)."""


def parametrized_layers(model: nn.Module, touched: dict[int, object]) -> list[nn.Module]:
    """The parametrized layers any of whose parametrizations' modules are in ``touched`` (by id)."""
    return [layer for _, layer in walk(model).items if parametrize.is_parametrized(layer)
            and any(id(m) in touched for m in layer.parametrizations.modules())]


@contextlib.contextmanager
def weight_readable(layer: nn.Module) -> Iterator[None]:
    """``layer.weight`` as the shrunk tensors compute it, while a resizer reads its shape:
    a hooked weight norm's attribute is computed again, and parametrizations run in eval
    mode (spectral norm's power iteration would move its ``u`` and ``v`` on every read)."""
    for hook in list(layer._forward_pre_hooks.values()):
        if isinstance(hook, WeightNorm):
            with torch.no_grad():
                setattr(layer, hook.name, hook.compute_weight(layer))
    parts = list(layer.parametrizations.modules()) if parametrize.is_parametrized(layer) else []
    modes = [m.training for m in parts]
    for m in parts:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(parts, modes):
            m.training = mode


__all__ = ["parametrized_layers", "weight_readable"]
