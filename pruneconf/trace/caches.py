"""Tensors a model derives from its parameters once and keeps: dropped whenever pruneconf
changes the parameters or starts a trace.

timm's LeViT, EfficientFormer (V1 and V2), EfficientViT (MSRA) and TinyViT keep
``attention_biases[:, attention_bias_idxs]`` in ``attention_bias_cache`` for eval-mode
forwards (``get_attention_biases`` in ``timm/models/levit.py``). A trace that meets the kept
tensor cannot see the parameter it came from, so its heads look fixed ("a tensor that is
not a parameter or buffer of the model"); a model whose parameters were shrunk, masked or
put back would go on using the old tensor. These models drop what they derived in
``train()``, as they must for training to see their parameters, so calling each overriding
``train()`` with the module's own mode drops it without changing any mode.
"""
from __future__ import annotations

from torch import nn

from .._walk import walk


def drop_derived(model: nn.Module) -> None:
    """Call every overridden ``train()`` in ``model`` with its module's current mode, then
    put every module's mode back (an override may set its children's modes its own way).
    A model with no such override is left alone: this runs around every shrink and masked
    forward, and setting each module's mode again cost more than the forward's hooks."""
    modules = [module for _, module in walk(model).items]
    if all(type(module).train is nn.Module.train for module in modules):
        return
    modes = [(module, module.training) for module in modules]
    try:
        for module, training in modes:
            if type(module).train is not nn.Module.train:
                module.train(training)
    finally:
        for module, training in modes:
            module.training = training
