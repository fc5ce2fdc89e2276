"""CPU latency of a model, measured with ``torch.utils.benchmark`` (eval mode, no grad)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils import benchmark


def latency_ms(model: nn.Module, inputs: Any, min_run_time: float = 0.5) -> float:
    """Median milliseconds per forward over ``blocked_autorange`` (warm-up included)."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(*args)  # warm-up: lazy init, allocator
            timer = benchmark.Timer(stmt="model(*args)", globals={"model": model, "args": args},
                                    num_threads=torch.get_num_threads())
            return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
    finally:
        model.train(training)
