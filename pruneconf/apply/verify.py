"""Is the shrunk model the masked model? Compare their outputs, in full precision.

:mod:`.dryrun` uses these comparisons before any mask is set, apply's check after shrinking.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..masks.plan import PruningPlan, model_tensors
from ..trace.refs import iter_tensors
from ..trace.tracer import _call
from .shrink import shrink

log = logging.getLogger("pruneconf")
HALF = (torch.float16, torch.bfloat16)
HALF_ULPS = 2  # rounding forgiven per element of a half-precision output


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Plain fp32 products while comparing. CUDA runs cuDNN convolutions in TF32 by default,
    rounding inputs to 10 mantissa bits, and picks kernels by shape, so a shrunk layer
    differs from its masked self by ~1e-3 for reasons that have nothing to do with pruning."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _widen(example: Any) -> Any:
    """``example`` with its half-precision tensors in float32 (a tensor, tuple/list or mapping)."""
    if isinstance(example, torch.Tensor):
        return example.float() if example.dtype in HALF else example
    if isinstance(example, Mapping):
        return {k: _widen(v) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(_widen(v) for v in example)
    return example


def widen_model(model: nn.Module) -> dict[str, torch.dtype]:
    """Hold the model's half-precision parameters and buffers in float32, in place (the
    ``Parameter`` objects stay, so masks and optimizers keep their references). Returns
    each widened tensor's dtype by name, for :func:`narrow_model`."""
    dtypes = {}
    for name, tensor in model_tensors(model).items():
        if tensor.dtype in HALF:
            dtypes[name] = tensor.dtype
            tensor.data = tensor.data.float()
    return dtypes


def narrow_model(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Back to the dtypes :func:`widen_model` recorded: exact, half -> float32 -> half loses nothing."""
    for name, tensor in model_tensors(model).items():
        if name in dtypes and tensor.dtype != dtypes[name]:
            tensor.data = tensor.data.to(dtypes[name])


@contextlib.contextmanager
def widened(model: nn.Module, example: Any) -> Iterator[Any]:
    """Compare half-precision models in float32; yields the example to compare with.

    Shrinking is exact in any dtype (it only drops slices), but a bf16 model's masked and
    shrunk forms round differently (other accumulation lengths, norms over fewer channels):
    measured on untrained torchvision models, their outputs differ by up to 5.7 bf16 eps of
    each element (vit_b_32), 4.4 % -- more than a real error of 2 % would show. Computed in
    float32 they agree to ~1e-6, so the check can stay as tight as for float32 models.
    """
    dtypes = widen_model(model)
    try:
        yield _widen(example) if dtypes else example
    finally:
        narrow_model(model, dtypes)


def model_outputs(model: nn.Module, example: Any) -> list[torch.Tensor]:
    """Every tensor the model returns, detached and copied, computed in full precision."""
    with torch.no_grad(), full_precision():
        return [t.detach().clone() for t in iter_tensors(_call(model, example))]


def ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of ``x``'s dtype at each element of ``x`` (subnormals: the smallest one)."""
    info = torch.finfo(x.dtype)
    magnitude = x.detach().double().abs().clamp_min(info.smallest_normal)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference over the outputs, relative to each output's scale (≥ 1).

    A half-precision output (one the model's own code casts to fp16/bf16 even when compared
    in float32, see :func:`widened`) was rounded once more at the end: each element is
    forgiven 2 ulps of its own value, so a relative error of 2 % (≥ 2.56 bf16 ulps) still
    counts.
    """
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf")
        elif x.numel():
            scale = max(1.0, float(x.abs().max()))
            error = (x.double() - y.double()).abs()
            if x.dtype in HALF:
                error = (error - HALF_ULPS * torch.maximum(ulp(x), ulp(y))).clamp_min(0)
            worst = max(worst, float(error.max()) / scale)
    return worst


def outputs_problem(expected: list[torch.Tensor], got: list[torch.Tensor], atol: float) -> str | None:
    """Why ``got`` is not ``expected`` within ``atol`` (relative), or None."""
    error = max_relative_error(expected, got)
    return None if error <= atol else f"differs from the masked one by {error:.3g} (relative)"


def compare_shrunk(model: nn.Module, example: Any, plan: PruningPlan, expected: list[torch.Tensor],
                   atol: float, log_changes: bool = True):
    """Shrink ``model`` (masks already removed) and compare with ``expected``.

    Returns ``(Shrunk, problem)``: ``problem`` is None when the outputs agree within ``atol``.
    """
    done = shrink(model, plan, log_changes=log_changes)
    try:
        problem = outputs_problem(expected, model_outputs(model, example), atol)
    except Exception as exc:  # noqa: BLE001 - a shrunk model that does not run is the finding
        problem = f"fails to run: {type(exc).__name__}: {exc}"
    return done, problem


__all__ = ["compare_shrunk", "full_precision", "max_relative_error", "model_outputs", "outputs_problem", "ulp",
           "widened"]
