"""After parameters shrink, each layer's attributes must say so: one updater per layer type.

``register_resizer(nn.Conv2d)`` style: adding a layer type is one function. A group whose
members include a built-in ``torch.nn`` layer with parameters and no updater is left whole,
with the reason, rather than shrunk into an inconsistent module.
"""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from torch import nn

from .._registry import Registry

Resizer = Callable[[nn.Module, dict], None]
log = logging.getLogger("pruneconf")
_RESIZERS = Registry("resizer")
register_resizer = _RESIZERS.register  # register_resizer(nn.Conv2d, ...) decorates an updater


def resizer_for(module: nn.Module) -> Resizer | None:
    for cls in type(module).__mro__:
        if cls in _RESIZERS:
            return _RESIZERS[cls]
    return None


def needs_resizer(module: nn.Module) -> bool:
    """Built-in layers keep shape attributes; custom modules' raw parameters do not."""
    return type(module).__module__.startswith("torch.nn.") and any(p is not None for p in module._parameters.values())


def _resize_conv(module: nn.Module, old: dict, full: str, split: str) -> None:
    """Weight dim 0 holds all ``full`` channels, dim 1 one group's share of ``split``.

    A grouped conv either lost whole groups (dim 1, the width of each group, is unchanged,
    the number of groups smaller) or channels inside every group (dim 1 smaller, ``groups``
    unchanged; see :mod:`pruneconf.groups.conv_groups`).
    """
    setattr(module, full, module.weight.shape[0])
    if old["groups"] > 1 and module.weight.shape[1] == old[split] // old["groups"]:
        module.groups = module.weight.shape[0] // (old[full] // old["groups"])
    setattr(module, split, module.weight.shape[1] * module.groups)


@register_resizer(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(module: nn.Module, old: dict) -> None:
    _resize_conv(module, old, "out_channels", "in_channels")


@register_resizer(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def _conv_transpose(module: nn.Module, old: dict) -> None:
    _resize_conv(module, old, "in_channels", "out_channels")


@register_resizer(nn.Linear)
def _linear(module: nn.Module, old: dict) -> None:
    module.out_features, module.in_features = module.weight.shape


@register_resizer(nn.Bilinear)
def _bilinear(module: nn.Module, old: dict) -> None:
    module.out_features, module.in1_features, module.in2_features = module.weight.shape


@register_resizer(nn.modules.batchnorm._NormBase)
def _norm(module: nn.Module, old: dict) -> None:
    """A norm with no affine and no running stats holds its width in ``num_features`` only,
    which :mod:`.attributes` updates from the trace."""
    reference = module.weight if module.weight is not None else module.running_mean
    if reference is not None:
        module.num_features = reference.shape[0]


@register_resizer(nn.GroupNorm)
def _group_norm(module: nn.Module, old: dict) -> None:
    """Whole groups were pruned, so the group width stays; one group stays one group."""
    module.num_channels = module.weight.shape[0]
    if old["num_groups"] > 1:
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


@register_resizer(nn.MultiheadAttention)
def _multihead_attention(module: nn.MultiheadAttention, old: dict) -> None:
    """Heads keep their number and lose dims evenly (see the attention rule).

    The layer scales scores by ``1/sqrt(head_dim)``; the masked model used the old head
    dim, so the query projection is multiplied by ``sqrt(new / old)`` to keep the scores.
    """
    packed = module.in_proj_weight is not None
    query_rows = module.in_proj_weight if packed else module.q_proj_weight
    module.embed_dim = (query_rows.shape[0] // 3) if packed else query_rows.shape[0]
    module.head_dim = module.embed_dim // module.num_heads
    module.kdim = module.embed_dim if packed else module.k_proj_weight.shape[1]
    module.vdim = module.embed_dim if packed else module.v_proj_weight.shape[1]
    factor = math.sqrt(module.head_dim / old["head_dim"])
    if factor != 1.0:
        with torch.no_grad():
            query_rows[:module.embed_dim].mul_(factor)
            if module.in_proj_bias is not None:
                module.in_proj_bias[:module.embed_dim].mul_(factor)


@register_resizer(nn.RNNBase)
def _recurrent(module: nn.Module, old: dict) -> None:
    """``nn.LSTM``/``GRU``/``RNN``: one size for all layers and directions; the flat weight
    list the forward reads (and cuDNN's packed copy) must point at the new parameters."""
    module.input_size = module.weight_ih_l0.shape[1]
    if module.proj_size:
        module.proj_size, module.hidden_size = module.weight_hr_l0.shape
        if module.proj_size >= module.hidden_size:
            log.warning("%s now has proj_size %d >= hidden_size %d: it runs, but nn.LSTM refuses to be "
                        "built with these sizes; prune its projections more or its hidden units less",
                        type(module).__name__, module.proj_size, module.hidden_size)
    else:
        module.hidden_size = module.weight_hh_l0.shape[1]
    module._init_flat_weights()
    module.flatten_parameters()


@register_resizer(nn.RNNCellBase)
def _recurrent_cell(module: nn.Module, old: dict) -> None:
    module.input_size, module.hidden_size = module.weight_ih.shape[1], module.weight_hh.shape[1]
