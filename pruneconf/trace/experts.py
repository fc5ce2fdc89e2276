"""Trace mixture-of-experts layers with every expert running, whatever the router picks.

Hugging Face transformers (5.x) stores a layer's experts as stacked 3-D parameters
(``experts.gate_up_proj[E, 2I, H]``, ``experts.down_proj[E, H, I]``) and runs them one of
three ways: a Python loop over the experts the router chose (``eager``) or one fused kernel
over all tokens (``grouped_mm``, ``batched_mm``, the default). A fused kernel mixes the
rows of every expert in one product, so no trace can tell which expert a channel belongs
to; the loop names each expert (``gate_up_proj[e]``) but only for the experts the example
batch happened to reach, so the trace would depend on the data.

While tracing, such an experts module therefore runs :func:`_every_expert_forward`: the
eager loop over *every* expert, each on the tokens routed to it (none, for an expert the
example does not reach). That is the same function as the model's own implementations, it
is the same sequence of ops for any input (only activation shapes differ, which the
fingerprint leaves out), and every expert appears in it as
``gate_up_proj[e]``/``down_proj[e]``, which the channel rules treat as that expert's own
weights (see :mod:`pruneconf.groups.stacks`). The model's forward is restored afterwards;
pruning checks the shrunk model against the masked one running the model's own code.

Only the layouts this loop reproduces exactly are swapped (gated or not, transposed or not,
no biases, no post-expert norm); other experts modules run their own code, and experts the
example does not reach are then left whole with a reason.
"""
from __future__ import annotations

import contextlib
import types
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F


def is_stacked_experts(module: nn.Module) -> bool:
    """A transformers experts module with a layout :func:`_every_expert_forward` reproduces."""
    down = module._parameters.get("down_proj")
    up = module._parameters.get("gate_up_proj" if getattr(module, "has_gate", False) else "up_proj")
    return (isinstance(down, nn.Parameter) and down.dim() == 3 and isinstance(up, nn.Parameter)
            and up.dim() == 3 and isinstance(getattr(module, "num_experts", None), int)
            and hasattr(module, "is_transposed") and hasattr(module, "act_fn")
            and not getattr(module, "has_bias", True) and not getattr(module, "has_post_expert_norm", True)
            and getattr(module, "is_concatenated", False))


def _apply(x: torch.Tensor, weight: torch.Tensor, transposed: bool) -> torch.Tensor:
    return x @ weight if transposed else F.linear(x, weight)


def _every_expert_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                          top_k_weights: torch.Tensor) -> torch.Tensor:
    """The eager loop of transformers, over every expert instead of the experts hit.

    Each expert runs on the tokens routed to it (possibly none), so the MACs counted on the
    trace are those of the active path of the example batch.
    """
    up = self.gate_up_proj if self.has_gate else self.up_proj
    out = torch.zeros_like(hidden_states)
    for e in range(self.num_experts):
        chosen = top_k_index == e
        token = chosen.any(-1).nonzero().squeeze(-1)
        weight = (top_k_weights * chosen).sum(-1)[token].unsqueeze(-1)
        h = _apply(hidden_states[token], up[e], self.is_transposed)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        h = _apply(h, self.down_proj[e], self.is_transposed)
        out = out.index_add(0, token, (h * weight).to(out.dtype))
    return out


@contextlib.contextmanager
def every_expert(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Within the block, the stacked experts among ``modules`` (a model's, as the trace
    walked them) run every expert (see module doc)."""
    swapped = []
    for module in modules:
        if is_stacked_experts(module) and "forward" not in module.__dict__:
            module.forward = types.MethodType(_every_expert_forward, module)
            swapped.append(module)
    try:
        yield
    finally:
        for module in swapped:
            del module.forward
