"""Is the shrunk model the masked model? Compare their outputs, in full precision.

:mod:`.dryrun` uses these comparisons before any mask is set, apply's check after shrinking.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..masks.plan import PruningPlan, model_tensors
from ..trace.refs import iter_refs, iter_tensors
from ..trace.tracer import _call
from ..trace.where import failing_line
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


def kept_outputs(outputs: list[torch.Tensor], plan: PruningPlan) -> list[torch.Tensor]:
    """The masked model's ``outputs`` as the shrunk model returns them.

    Most outputs keep their width (the ``output`` channel rule pins them); an output that
    may shrink (a ``ModelOutput``'s secondary hidden states) loses the channels the plan
    prunes, and the kept ones must match. Outputs are matched with the traced output's
    tensors in order; a model that returns a different structure is compared as it is.
    """
    graph = plan.groups.graph
    refs = list(iter_refs(graph.nodes[graph.graph["output"]]["args"]))
    if len(refs) != len(outputs):
        return outputs
    kept = []
    for tensor, ref in zip(outputs, refs):
        for dim, keep in plan.surviving(ref.node, ref.index).items():
            if not keep.all() and dim < tensor.dim() and tensor.shape[dim] == len(keep):
                tensor = tensor.index_select(dim, torch.as_tensor(np.flatnonzero(keep), device=tensor.device))
        kept.append(tensor)
    return kept


def ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of ``x``'s dtype at each element of ``x`` (subnormals: the smallest one)."""
    info = torch.finfo(x.dtype)
    magnitude = x.detach().double().abs().clamp_min(info.smallest_normal)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


_CHUNK = 1 << 18  # elements compared at a time: widening a whole segmentation output cost 4 copies of it


def max_relative_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute difference over the outputs, relative to each output's scale (the
    largest finite magnitude, at least 1); ``inf`` where shapes differ or only one side is
    NaN or infinite at an element (NaN and equal infinities on both sides agree).

    A half-precision output (one the model's own code casts to fp16/bf16 even when compared
    in float32, see :func:`widened`) was rounded once more at the end: each element is
    forgiven 2 ulps of its own value, so a relative error of 2 % (≥ 2.56 bf16 ulps) still
    counts. Outputs are compared a chunk at a time, in float64.
    """
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return float("inf")
        elif x.numel():
            worst = max(worst, _relative_difference(x, y))
    return worst


def _relative_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """The largest difference of two outputs over ``x``'s scale, chunk by chunk."""
    pairs = list(zip(x.detach().reshape(-1).split(_CHUNK), y.detach().reshape(-1).split(_CHUNK)))
    scale = max([1.0, *(float(torch.nan_to_num(xs.abs(), posinf=0.0).max()) for xs, _ in pairs)])
    return max(_largest_difference(xs, ys) for xs, ys in pairs) / scale


def _largest_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """The largest ``|x - y|`` of two flat chunks (half precision: beyond their rounding)."""
    xd, yd = x.double(), y.double()
    error = (xd - yd).abs()
    if x.dtype in HALF:
        error = (error - HALF_ULPS * torch.maximum(ulp(x), ulp(y))).clamp_min(0)
    agree = (xd == yd) | (xd.isnan() & yd.isnan())  # equal infinities differ by NaN, and so do two NaNs
    error = error.masked_fill(agree, 0.0)
    if bool(error.isnan().any()):
        return float("inf")
    return float(error.max())


def outputs_problem(expected: list[torch.Tensor], got: list[torch.Tensor], atol: float) -> str | None:
    """Why ``got`` is not ``expected`` within ``atol`` (relative), or None."""
    error = max_relative_error(expected, got)
    return None if error <= atol else f"differs from the masked one by {error:.3g} (relative)"


def compare_shrunk(model: nn.Module, example: Any, plan: PruningPlan, expected: list[torch.Tensor],
                   atol: float, log_changes: bool = True):
    """Shrink ``model`` (masks already removed) and compare with ``expected``.

    Returns ``(Shrunk, problem)``: ``problem`` is None when the outputs agree within ``atol``.
    """
    expected = kept_outputs(expected, plan)
    done = shrink(model, plan, log_changes=log_changes)
    try:
        problem = outputs_problem(expected, model_outputs(model, example), atol)
    except Exception as exc:  # noqa: BLE001 - a shrunk model that does not run is the finding
        where = failing_line(exc)
        problem = f"fails to run{f' at {where}' if where else ''}: {type(exc).__name__}: {exc}"
    return done, problem


__all__ = ["compare_shrunk", "full_precision", "kept_outputs", "max_relative_error", "model_outputs",
           "outputs_problem", "ulp", "widened"]
