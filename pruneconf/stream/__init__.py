"""Phase two for checkpoints larger than memory: safetensors shards pruned tensor by tensor.

    model = build_model(spec, device="meta")          # the structure, no weights
    streamed = prune_checkpoint(model, inputs_on_meta, recipe, "ckpt/", Path("pruned/"))
    # pruned/ holds the shards (same names) and index; load_pruned(model, applied, "pruned/")
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..recipe.load import Recipe
from .checkpoint import Checkpoint, is_sharded
from .prune import StreamedPlan, plan_streamed, pruned_costs, write_pruned


def prune_checkpoint(model: nn.Module, inputs: Any, recipe: Recipe, weights: str | os.PathLike,
                     output: Path) -> StreamedPlan:
    """Prune the safetensors checkpoint ``weights`` of the meta-device ``model`` as ``recipe``
    says, writing the pruned shards to the directory ``output``."""
    streamed = plan_streamed(model, inputs, recipe, Checkpoint.open(weights))
    write_pruned(streamed, output)
    return streamed


__all__ = ["Checkpoint", "StreamedPlan", "is_sharded", "prune_checkpoint", "pruned_costs"]
