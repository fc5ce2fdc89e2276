"""Shrink one group on trial: does the model still run?

Some code computes sizes from another tensor's shape, which the trace records as plain
ints: Swin's attention reshapes its qkv output with ``C // num_heads`` where ``C`` is the
width of the residual stream. The grouping cannot see that the two widths must match, so a
group whose shrinking breaks such code is found by shrinking it alone (half its channels)
and running the model once, in eval mode without gradients; everything is undone after.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..groups import ChannelGroups
from ..masks.plan import PruningPlan
from ..trace.tracer import _call
from .shrink import shrink


def fails_when_shrunk(model: nn.Module, example: Any, groups: ChannelGroups, center: str) -> str | None:
    """Why the model fails to run with group ``center`` shrunk, or None when it runs."""
    keep = np.arange(max(1, groups[center].channels // 2))
    training = model.training
    done = shrink(model, PruningPlan(groups, {center: keep}, {}), log_changes=False)
    try:
        with torch.no_grad():
            _call(model.eval(), example)
    except Exception as exc:  # noqa: BLE001 - any failure means the group cannot shrink
        return f"the model fails to run with it shrunk ({type(exc).__name__}: {exc})"
    finally:
        done.undo()
        model.train(training)
    return None
