"""Dropping whole experts of a mixture-of-experts layer, masked first, so routing stays exact.

An expert is dropped with everything that is its own: its slice of every stacked expert
tensor and its router row (and router bias, if any). Zeroing those is not enough while
masked: a zero router row still gives the expert a logit of 0, which the router may pick
and which changes the softmax over the experts. So while an expert is masked, the router's
logits for it are set to ``-inf`` (:class:`RouterMask`): it is never picked, its softmax
probability is exactly 0, and the kept experts' probabilities are those of the shrunk
router, which no longer has the row. Masked and applied models route every token to the
same experts with the same weights.

The router is found next to the experts module, as transformers lays MoE blocks out: a
sibling module whose ``weight`` has one row per expert (``mlp.gate`` next to ``mlp.experts``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping

import networkx as nx
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..recipe.experts import expert_layers
from ..recipe.load import Recipe

log = logging.getLogger("pruneconf")


@dataclasses.dataclass
class ExpertDrop:
    """One layer's experts as a plan keeps them."""

    layer: str                 # the experts module
    router: str                # the router module next to it
    keep: np.ndarray           # bool per expert
    params: tuple[str, ...]    # every tensor sliced along dim 0: stacked experts and router rows


def find_router(model: nn.Module, layer: str, count: int) -> str | None:
    """The sibling of ``layer`` whose ``weight`` has a row per expert."""
    parent, _, name = layer.rpartition(".")
    block = model.get_submodule(parent)
    for child_name, child in block.named_children():
        weight = child._parameters.get("weight")
        if child_name != name and weight is not None and weight.dim() == 2 and weight.shape[0] == count:
            return f"{parent}.{child_name}" if parent else child_name
    return None


def _top_k(module: nn.Module) -> int:
    return int(getattr(module, "top_k", None) or getattr(getattr(module, "config", None), "num_experts_per_tok", 1))


def _scores(tensors: Mapping[str, torch.Tensor], params: list[str], count: int) -> np.ndarray:
    """Squared L2 norm of each expert's weights over its stacked tensors."""
    return sum(tensors[p].detach().double().pow(2).reshape(count, -1).sum(1).numpy() for p in params)


def expert_drops(model: nn.Module, graph: nx.DiGraph, recipe: Recipe,
                 tensors: Mapping[str, torch.Tensor], applied: bool = False) -> dict[str, ExpertDrop]:
    """Which experts each layer keeps, as the recipe's ``experts`` section and
    ``settings.expert_sparsity`` say, or with ``applied`` as its ``applied`` section recorded."""
    out: dict[str, ExpertDrop] = {}
    layers = expert_layers(graph)
    for layer, (count, params) in layers.items():
        keep = np.ones(count, dtype=bool)
        choice = recipe.experts.get(layer)
        if applied:
            if layer in recipe.applied_experts:
                keep[:] = False
                keep[recipe.applied_experts[layer]] = True
        elif choice is not None and choice.drop is not None:
            keep[list(choice.drop)] = False
        else:
            sparsity = choice.sparsity if choice is not None else recipe.settings.expert_sparsity
            gone = math.floor(count * sparsity + 1e-9)
            keep[np.argsort(_scores(tensors, params, count), kind="stable")[:gone]] = False
        if keep.all():
            continue
        router = find_router(model, layer, count)
        key = f"experts.{layer}" if layer in recipe.experts else "settings.expert_sparsity"
        if router is None:
            raise recipe.error(f"cannot drop experts of '{layer}': no router with a row per expert next to it", key)
        top_k = _top_k(model.get_submodule(router))
        if keep.sum() < top_k:
            raise recipe.error(f"'{layer}' would keep {int(keep.sum())} experts, fewer than the {top_k} its "
                               f"router picks per token", key)
        rows = [f"{router}.{n}" for n, t in model.get_submodule(router).named_parameters()
                if t.dim() >= 1 and t.shape[0] == count]
        out[layer] = ExpertDrop(layer, router, keep, tuple(params + rows))
    counts = {int(out[layer].keep.sum()) if layer in out else count for layer, (count, _) in layers.items()}
    if out and len(counts) > 1:
        log.warning("MoE layers will keep different numbers of experts (%s): each experts module and router "
                    "records its own, the model's config keeps one count", sorted(counts))
    return out


class RouterMask(TorchFunctionMode):
    """Within a router's forward: its logits for masked experts become ``-inf``."""

    def __init__(self, weight: torch.Tensor, dropped: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.dropped = weight, dropped

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if func is F.linear and weight is self.weight:
            out = out.masked_fill(self.dropped.to(out.device), float("-inf"))
        return out


def attach_router_masks(model: nn.Module, drops: Mapping[str, ExpertDrop]) -> list:
    """Hooks that run each router with its masked experts' logits at ``-inf``."""
    handles = []
    for drop in drops.values():
        router = model.get_submodule(drop.router)
        mode = RouterMask(router.weight, torch.as_tensor(~drop.keep))
        handles.append(router.register_forward_pre_hook(lambda m, args, mode=mode: _enter(mode)))
        handles.append(router.register_forward_hook(lambda m, args, out, mode=mode: _exit(mode), always_call=True))
    return handles


def _enter(mode: RouterMask) -> None:  # a pre-hook that returned the mode would replace the args
    mode.__enter__()


def _exit(mode: RouterMask) -> None:
    mode.__exit__(None, None, None)


__all__ = ["ExpertDrop", "RouterMask", "attach_router_masks", "expert_drops", "find_router"]
