"""Latency measured with ``torch.utils.benchmark``: one timing routine for the sweep's
whole-model figures and for the latency tables' per-layer probes."""
from __future__ import annotations

import importlib
import logging
import time
from typing import Any, Callable

import torch
from torch import nn

from .heap import reused_memory


def _benchmark() -> Any:
    """``torch.utils.benchmark``, imported when first timed: it imports ``cpp_extension``,
    which warns about a CUDA toolkit without a GPU, noise on every command that times
    nothing (and on those that do: the toolkit plays no part in timing)."""
    quiet = logging.getLogger("torch.utils.cpp_extension")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return importlib.import_module("torch.utils.benchmark")
    finally:
        quiet.setLevel(level)


MODEL_CALLS = 5  # whole-model timings take at least this many calls, however slow the model
UNIT_CALLS = 3   # a latency table's layer timings take at least this many (see latency_measure.time_unit)


def time_ms(call: Callable[..., Any], args: tuple, threads: int, min_run_time: float,
            statistic: str = "median", min_calls: int = 1) -> float:
    """Milliseconds of ``call(*args)`` (inference mode, after a warm-up call for lazy init and
    the allocator, with memory reused from call to call: :mod:`.heap`): the median of the
    timed blocks, or their minimum, which resists neighbours sharing the cores (noise only adds).

    ``min_calls`` stretches the run time to that many calls, timed after the warm-up: a whole
    regnet_y_1_6gf at batch 8 takes 0.5 s a call on one CPU thread, so a 0.5 s timing was one
    sample, and one busy moment decided a round (per-round ratios of one plan spread 0.39-0.63)."""
    def forward() -> None:
        with torch.inference_mode():
            call(*args)
    timer = _benchmark().Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    with reused_memory():
        forward()
        if min_calls > 1:
            started = time.perf_counter()
            forward()
            min_run_time = max(min_run_time, min_calls * (time.perf_counter() - started))
        blocks = timer.blocked_autorange(min_run_time=min_run_time)
    return (blocks.median if statistic == "median" else min(blocks.times)) * 1e3


def latency_ms(model: nn.Module, inputs: Any, min_run_time: float = 0.5) -> float:
    """Median milliseconds per forward of ``model`` in eval mode, at the current thread count."""
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    training = model.training
    model.eval()
    try:
        return time_ms(model, args, torch.get_num_threads(), min_run_time, min_calls=MODEL_CALLS)
    finally:
        model.train(training)
