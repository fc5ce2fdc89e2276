"""After parameters shrink, each layer's attributes must say so: one updater per layer type.

``register_resizer(nn.Conv2d)`` style: adding a layer type is one function. A group whose
members include a built-in ``torch.nn`` layer with parameters and no updater is left whole,
with the reason, rather than shrunk into an inconsistent module.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

Resizer = Callable[[nn.Module, dict], None]
_RESIZERS: dict[type, Resizer] = {}


def register_resizer(*types: type) -> Callable[[Resizer], Resizer]:
    def decorate(fn: Resizer) -> Resizer:
        for t in types:
            _RESIZERS[t] = fn
        return fn
    return decorate


def resizer_for(module: nn.Module) -> Resizer | None:
    for cls in type(module).__mro__:
        if cls in _RESIZERS:
            return _RESIZERS[cls]
    return None


def needs_resizer(module: nn.Module) -> bool:
    """Built-in layers keep shape attributes; custom modules' raw parameters do not."""
    return type(module).__module__.startswith("torch.nn.") and any(True for _ in module.parameters(recurse=False))


@register_resizer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Module, old: dict) -> None:
    """Grouped convs lose whole groups: the width of each group is unchanged."""
    module.out_channels = module.weight.shape[0]
    if old["groups"] > 1:
        module.groups = module.out_channels // (old["out_channels"] // old["groups"])
    module.in_channels = module.weight.shape[1] * module.groups


@register_resizer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(module: nn.Module, old: dict) -> None:
    module.in_channels = module.weight.shape[0]
    if old["groups"] > 1:
        module.groups = module.in_channels // (old["in_channels"] // old["groups"])
    module.out_channels = module.weight.shape[1] * module.groups


@register_resizer(nn.Linear)
def _linear(module: nn.Module, old: dict) -> None:
    module.out_features, module.in_features = module.weight.shape


@register_resizer(nn.Bilinear)
def _bilinear(module: nn.Module, old: dict) -> None:
    module.out_features, module.in1_features, module.in2_features = module.weight.shape


@register_resizer(nn.modules.batchnorm._NormBase)
def _norm(module: nn.Module, old: dict) -> None:
    reference = module.weight if module.weight is not None else module.running_mean
    module.num_features = reference.shape[0]


@register_resizer(nn.GroupNorm)
def _group_norm(module: nn.Module, old: dict) -> None:
    module.num_channels = module.weight.shape[0]
    module.num_groups = module.num_channels // (old["num_channels"] // old["num_groups"])


@register_resizer(nn.LayerNorm, nn.RMSNorm)
def _layer_norm(module: nn.Module, old: dict) -> None:
    module.normalized_shape = tuple(module.weight.shape)


@register_resizer(nn.PReLU)
def _prelu(module: nn.Module, old: dict) -> None:
    module.num_parameters = module.weight.numel()


@register_resizer(nn.Embedding)
def _embedding(module: nn.Module, old: dict) -> None:
    module.num_embeddings, module.embedding_dim = module.weight.shape
