"""Channel importance metrics, aggregated over every coupled member of a group.

A weight metric scores each channel of a group from the weights of all the group's members:
the rows of its sources, the per-channel parameters that follow them and the columns of its
consumers. Positions that repeat a channel (a depthwise multiplier, a flatten) add up.
A data metric reads a statistic gathered over calibration batches (:mod:`.calibration`);
:data:`DATA_METRICS` says which statistic, so calibration collects only what is needed.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np
import torch

from .._registry import Registry
from ..errors import PruneconfError
from ..groups import Group
from ..groups.find import Member
from ..groups.context import CONSUMER, FOLLOWER, SOURCE
from .calibration import Calibration


class NeedsCalibration(PruneconfError):
    """A data metric was asked to rank channels without calibration statistics."""


@dataclasses.dataclass(frozen=True)
class RankInputs:
    """What a metric may read: the model's tensors, the recipe's seed, calibration statistics."""

    tensors: Mapping[str, torch.Tensor]
    seed: int = 0
    calibration: Calibration | None = None
    # per (metric, parameter, dim, slice): the score of each row, shared by the groups it spans
    row_scores: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # per device: the float32 buffer every weight's chunks are transformed in (see _power_sum)
    scratch: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def statistic(self, name: str, group: Group) -> np.ndarray | None:
        """The group's per-channel ``name`` statistic; None where calibration saw none of its channels."""
        if self.calibration is None:
            raise NeedsCalibration(f"the metric needs calibration batches (statistic '{name}')")
        return self.calibration.score(name, group)


Metric = Callable[[Group, RankInputs], np.ndarray]
METRICS = Registry("metric")
metric = METRICS.register
DATA_METRICS: dict[str, str] = {}  # metric -> the calibration statistic it reads


def data_metric(name: str, statistic: str) -> Callable[[Metric], Metric]:
    """Register a metric that ranks by the calibration statistic ``statistic``."""
    def decorate(fn: Metric) -> Metric:
        METRICS.register(name)(fn)
        DATA_METRICS[name] = statistic
        return fn
    return decorate


def member_rows(m: Member, tensor: torch.Tensor) -> torch.Tensor:
    """One row per index along the member's dim (of its expert's slice, for stacked experts)."""
    dim = m.dim
    if m.slice is not None:
        tensor, dim = tensor[m.slice], dim - 1
    return tensor.detach().movedim(dim, 0).reshape(tensor.shape[dim], -1)


def _row_totals(m: Member, tensor: torch.Tensor, total) -> dict[int, np.ndarray]:
    """``total(values, dims)`` over every position but a dim, one value per index, keyed by
    the parameter dim: the member's, and for a weight of three or more dims read along dim 0
    or 1, both of them. Such a weight is reduced once to its ``[dim 0, dim 1]`` plane, whose
    sums score both the group it produces and the group it reads (moving a dim to the front
    copied the weight each time). Only the totals are kept: a 1x1 conv's plane is as large as
    its weight, and caching planes held a copy of most of a ResNet until ranking ended."""
    dim, offset = m.dim, 0
    if m.slice is not None:
        tensor, dim, offset = tensor[m.slice], dim - 1, 1
    values = tensor.detach()  # widened chunk by chunk by ``total``, not as a float copy of the weight
    if values.dim() >= 3 and dim < 2:
        if values.shape[2:].numel() == 1:  # a 1x1 conv is its own plane: reduce its rows and columns directly
            plane = values.reshape(values.shape[:2])
            rows, columns = total(plane, (1,)), total(plane, (0,))
        else:
            plane = total(values, tuple(range(2, values.dim())))
            rows, columns = plane.sum(1), plane.sum(0)
        return {offset: _numpy(rows), offset + 1: _numpy(columns)}
    return {m.dim: _numpy(total(values, tuple(d for d in range(values.dim()) if d != dim)))}


def _numpy(totals: torch.Tensor) -> np.ndarray:
    return totals.cpu().double().numpy()


def _per_channel(group: Group, inputs: RankInputs, roles, key: str, total) -> np.ndarray:
    """Sum ``total(values, dims)`` (a sum over ``dims``) over member slices, each slice being one index along the member dim.

    Each parameter dim is scored once per ranking (cached under ``key`` in ``inputs``): a
    DenseNet layer reads a concatenation of many groups, and scoring its whole weight again
    for each of them made ranking quadratic in the number of groups."""
    score = np.zeros(group.channels)
    for m in group.members:
        tensor = inputs.tensors.get(m.param)
        if m.role not in roles or tensor is None or not tensor.is_floating_point() or tensor.dim() == 0:
            continue
        cached = (key, m.param, m.dim, m.slice)
        if cached not in inputs.row_scores:
            for dim, totals in _row_totals(m, tensor, total).items():
                inputs.row_scores[key, m.param, dim, m.slice] = totals
        np.add.at(score, m.channels, inputs.row_scores[cached][m.index])
    return score


_CHUNK = 1 << 20  # elements of a weight transformed at a time


def _power_sum(values: torch.Tensor, dims: tuple[int, ...], p: int, scratch: dict) -> torch.Tensor:
    """Σ |x|^p over ``dims`` (p = 1 or 2) in float32, never through a copy of the weight.

    Over trailing dims (a weight's rows, a conv's taps) a norm reduces in place. A leading
    dim (a linear layer's columns) it reduced 5-16x slower than raising each element and
    summing, so there the weight is transformed about :data:`_CHUNK` elements at a time:
    at once it would be a copy of the weight (an LLM's embedding is gigabytes). Every chunk
    of every weight goes through one buffer per ranking (``scratch``): a chunk allocated
    per weight left glibc's heap a chunk larger per layer in some processes (+160 MiB over
    convnext_base's ranking, in half the runs)."""
    if not dims:  # a 1-D parameter: each index is its own total (``sum(())`` would sum everything)
        return values.float().abs() ** p
    if 0 not in dims:
        # at least float32 (bf16 weights), never narrowing (a float64 model: vector_norm refuses)
        return torch.linalg.vector_norm(values, p, dims, dtype=torch.promote_types(values.dtype, torch.float32)
                                        ).float().pow_(p)
    fn = torch.square if p == 2 else torch.abs
    rows = max(1, _CHUNK // max(1, values[0].numel()))
    buffer = _buffer(scratch, values.device, rows * values[0].numel())
    sums = []
    for chunk in values.split(rows):
        view = buffer[:chunk.numel()].view(chunk.shape)
        source = chunk if chunk.dtype == torch.float32 else view.copy_(chunk)  # widened into the buffer
        sums.append(fn(source, out=view).sum(dims))
    return torch.stack(sums).sum(0)


def _buffer(scratch: dict, device: torch.device, size: int) -> torch.Tensor:
    """A float32 buffer of at least ``size`` elements on ``device``, made once per ranking."""
    buffer = scratch.get(device)
    if buffer is None or buffer.numel() < size:
        buffer = scratch[device] = torch.empty(size, dtype=torch.float32, device=device)
    return buffer


@metric("l1_norm")
def l1_norm(group: Group, inputs: RankInputs) -> np.ndarray:
    return _per_channel(group, inputs, (SOURCE, CONSUMER), "l1",
                        lambda values, dims: _power_sum(values, dims, 1, inputs.scratch))


@metric("l2_norm")
def l2_norm(group: Group, inputs: RankInputs) -> np.ndarray:
    return np.sqrt(_per_channel(group, inputs, (SOURCE, CONSUMER), "l2",
                                lambda values, dims: _power_sum(values, dims, 2, inputs.scratch)))


@metric("bn_gamma")
def bn_gamma(group: Group, inputs: RankInputs) -> np.ndarray:
    """|γ| of the norms that follow the group (network slimming); l2_norm where there is none."""
    tensors = inputs.tensors
    norms = [m for m in group.members if m.role == FOLLOWER and m.param.endswith(".weight")
             and tensors.get(m.param) is not None and tensors[m.param].dim() == 1]
    if not norms:
        return l2_norm(group, inputs)
    score = np.zeros(group.channels)
    for m in norms:
        np.add.at(score, m.channels, tensors[m.param].detach().abs().double().numpy()[m.index])
    return score


@metric("fpgm")
def fpgm(group: Group, inputs: RankInputs) -> np.ndarray:
    """Filter pruning via geometric median: channels close to all others are redundant."""
    features = []
    for m in group.members:
        tensor = inputs.tensors.get(m.param)
        if m.role != SOURCE or tensor is None:
            continue
        rows = member_rows(m, tensor).double()
        per_channel = torch.zeros(group.channels, rows.shape[1], dtype=torch.float64)
        per_channel.index_add_(0, torch.as_tensor(m.channels), rows[torch.as_tensor(m.index)])
        features.append(per_channel)
    if not features:
        return l2_norm(group, inputs)
    stacked = torch.cat(features, 1)
    return torch.cdist(stacked, stacked).sum(1).numpy()


@metric("random")
def random(group: Group, inputs: RankInputs) -> np.ndarray:
    """Seeded per group, so a recipe always keeps the same channels."""
    digest = sum(ord(c) * (i + 1) for i, c in enumerate(group.center))
    return np.random.default_rng([inputs.seed, digest]).random(group.channels)


@data_metric("activation", "activation")
def activation(group: Group, inputs: RankInputs) -> np.ndarray:
    """Mean |activation| of each channel where the group's consumers read it, summed over
    every such tensor (Minitron, Wanda-sp); see :mod:`.calibration`. A group no layer reads
    as an input (calibration warns) is ranked by ``l2_norm``."""
    score = inputs.statistic("activation", group)
    return l2_norm(group, inputs) if score is None else score


@data_metric("taylor", "taylor")
def taylor(group: Group, inputs: RankInputs) -> np.ndarray:
    """|Σ w·∂L/∂w| over every member slice of the channel, summed over calibration batches:
    the first-order loss change of removing the whole channel (LLM-Pruner's group Taylor)."""
    score = inputs.statistic("taylor", group)
    if score is None:
        raise NeedsCalibration(f"the calibration has no taylor scores for group '{group.center}'; "
                               "calibrate this model")
    return score
