"""Which channels each group keeps: the recipe's sparsities applied to ranked channels."""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .._walk import walk
from ..groups import ChannelGroups, Group
from .._progress import progress
from ..recipe.load import Recipe
from .calibration import Calibration, Loss, calibrate
from .experts import ExpertDrop, expert_drops
from .global_rank import global_plan
from .importance import DATA_METRICS, METRICS, RankInputs
from .keep import group_keep, top_channels

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PruningPlan:
    """Kept group channels per group center; groups not listed keep everything."""

    groups: ChannelGroups
    kept: dict[str, np.ndarray]
    requested: dict[str, float]
    experts: dict[str, ExpertDrop] = dataclasses.field(default_factory=dict)  # experts module -> drop
    # Per group: its members' keep bits, shared by restricted plans (the dry run makes many).
    _member_keeps: dict[str, list] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _survivors: dict[tuple[str, int], dict] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @functools.cached_property
    def members(self) -> dict[tuple[str, int], np.ndarray]:
        """Keep masks of every parameter dimension the plan shrinks, keyed ``(param, dim)``.

        A dimension may span several groups (a conv after a ``cat``): an index survives
        unless the group it belongs to drops its channel. Computed once: masking and
        shrinking both read it.
        """
        shapes = self.groups.graph.graph["params"]
        out: dict[tuple[str, int], np.ndarray] = {}
        for g in self.groups:
            if g.center not in self.kept:
                continue
            for m, bits in self._keeps_of(g):
                shape = shapes[m.param]
                if m.slice is None:
                    keep = out.setdefault((m.param, m.dim), np.ones(shape[m.dim], dtype=bool))
                    keep[m.index] &= bits
                else:  # one row per expert of a stacked parameter
                    keep = out.setdefault((m.param, m.dim), np.ones((shape[0], shape[m.dim]), dtype=bool))
                    keep[m.slice, m.index] &= bits
        for drop in self.experts.values():  # whole experts: their slices and router rows
            for name in drop.params:
                out[(name, 0)] = drop.keep.copy()
        _grouped_columns(out, self.groups.grouped)
        return {k: _same_rows(v) for k, v in out.items() if not v.all()}

    @functools.cached_property
    def orders(self) -> dict[tuple[str, int], np.ndarray]:
        """Where a shuffled trunk reaches a layer in another order than its own (see
        :mod:`pruneconf.groups.routes`): ``(param, dim)`` -> the order of its kept indices."""
        out: dict[tuple[str, int], np.ndarray] = {}
        for g in self.groups:
            if g.routing is None or g.center not in self.kept:
                continue
            for index, order in g.routing.orders(self.kept[g.center]).items():
                m = g.members[index]
                if (m.param, m.dim) in out and not np.array_equal(out[(m.param, m.dim)], order):
                    raise ValueError(f"'{m.param}' reads shuffled channels in two orders")
                out[(m.param, m.dim)] = order
        return out

    def _kept_bits(self, group: Group) -> np.ndarray | None:
        """Which of ``group``'s channels the plan keeps, as a lookup table (``np.isin`` sorted
        every time), or None when the plan does not prune it."""
        kept = self.kept.get(group.center)
        if kept is None:
            return None
        bits = np.zeros(group.channels, dtype=bool)
        bits[kept] = True
        return bits

    def _keeps_of(self, group: Group) -> list:
        """``(member, kept bits of its channels)`` for a group the plan prunes, computed once."""
        if group.center not in self._member_keeps:
            bits = self._kept_bits(group)
            self._member_keeps[group.center] = [(m, bits[m.channels]) for m in group.members]
        return self._member_keeps[group.center]

    def surviving(self, node: str, index: int = 0) -> dict[int, np.ndarray]:
        """For each labelled dim of a node's output: which positions survive the plan
        (a dim may span several groups; positions in no group always survive). Computed once
        per output: shrinking asks it of every sized call several times. Read only."""
        found = self._survivors.get((node, index))
        if found is not None:
            return found
        out = self._survivors[(node, index)] = {}
        for dim, (group_index, channel) in self.groups.channel_map(node, index).items():
            keep = np.ones(len(group_index), dtype=bool)
            for gi in np.unique(group_index[group_index >= 0]).tolist():
                bits = self._kept_bits(self.groups.groups[gi])
                if bits is not None:
                    at = group_index == gi
                    keep[at] = bits[channel[at]]
            out[dim] = keep
        return out

    def restricted(self, centers) -> "PruningPlan":
        """The same plan pruning only the groups in ``centers``."""
        keep = set(centers)
        return PruningPlan(self.groups, {c: k for c, k in self.kept.items() if c in keep}, self.requested,
                           self.experts, self._member_keeps)


def _grouped_columns(out: dict[tuple[str, int], np.ndarray], grouped: Mapping[str, int]) -> None:
    """The columns of a grouped conv pruned inside its groups (:mod:`pruneconf.groups.conv_groups`):
    input ``i`` of a conv group goes with its output row ``i``, so every row keeps, of its own
    group's inputs, the positions its group's rows keep; a row per output channel, each keeping
    the same number (every conv group keeps the same count). A conv whose conv groups each
    keep all or none of their rows (``conv_groups: whole``) keeps every column of the rows it
    keeps: ``groups`` shrinks instead (see :func:`pruneconf.apply.resize._resize_conv`)."""
    for name, groups in grouped.items():
        rows = out.get((name, 0))
        if rows is not None:
            per_group = rows.reshape(groups, -1)
            if not (per_group.all(axis=1) | ~per_group.any(axis=1)).all():
                out[(name, 1)] = np.repeat(per_group, per_group.shape[1], axis=0)


def _same_rows(keep: np.ndarray) -> np.ndarray:
    """A per-expert keep mask whose experts all keep the same positions, as one row."""
    return keep[0] if keep.ndim == 2 and (keep == keep[0]).all() else keep


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, then every buffer, by name (shared ones under each name), as
    ``named_parameters`` and ``named_buffers`` list them, in one walk of the modules
    (a prune asks several times; their generators took twice as long)."""
    params, buffers = {}, {}
    for path, module in walk(model).items:
        prefix = path + "." if path else ""
        for table, out in ((module._parameters, params), (module._buffers, buffers)):
            for attr, tensor in table.items():
                if tensor is not None:
                    out[prefix + attr] = tensor
    params.update(buffers)
    return params


def calibration_for(model: nn.Module, groups: ChannelGroups, metric: str, data: Any,
                    loss: Loss | None = None) -> Calibration | None:
    """What ``metric`` needs from ``data``: batches are calibrated for its statistic (once:
    keep the result to rank again), a :class:`Calibration` is used as it is, and a weight
    metric needs nothing."""
    statistic = DATA_METRICS.get(metric)
    if data is None:
        return None
    if statistic is None:
        log.info("metric %s ranks channels by their weights: the calibration data is not used", metric)
        return None
    return data if isinstance(data, Calibration) else calibrate(model, groups, data, (statistic,), loss)


def rank_inputs(model: nn.Module, recipe: Recipe, calibration: Calibration | None,
                tensors: Mapping[str, torch.Tensor] | None = None) -> RankInputs:
    """What the recipe's metric reads (the model's tensors unless ``tensors`` are given); a
    data metric without calibration is a located error."""
    metric = recipe.settings.metric
    if metric in DATA_METRICS and calibration is None:
        raise recipe.error(f"metric '{metric}' ranks channels by data: give calibration batches "
                           "(Pruner(..., calibration=batches), or --calibration module:callable)", "settings.metric")
    return RankInputs(model_tensors(model) if tensors is None else tensors, recipe.settings.seed, calibration)


def make_plan(model: nn.Module, groups: ChannelGroups, recipe: Recipe,
              skip: Mapping[str, str] | None = None, calibration: Calibration | None = None,
              tensors: Mapping[str, torch.Tensor] | None = None) -> PruningPlan:
    """Rank every prunable group's channels and keep the best ``kept_channels`` of them.

    ``skip`` maps group centers to a reason they must stay whole (layers we cannot resize).
    ``calibration`` holds the statistics a data metric ranks by (:func:`calibration_for`).
    ``tensors`` are the weights to rank by, the model's own by default (a checkpoint read
    tensor by tensor when the model is on the meta device, see :mod:`pruneconf.stream`).
    Ties break by channel index, so the same weights and recipe always keep the same channels.
    A ``mode: global`` recipe ranks across groups instead (:mod:`.global_rank`).
    """
    tensors = model_tensors(model) if tensors is None else tensors
    drops = expert_drops(model, groups.graph, recipe, tensors)
    inputs = rank_inputs(model, recipe, calibration, tensors)
    if recipe.settings.mode == "global":
        return PruningPlan(groups, *global_plan(groups, recipe, inputs, skip), drops)
    score = METRICS[recipe.settings.metric]
    kept, requested = {}, {}
    for g in progress(groups.prunable, "ranking channels"):
        sparsity = recipe.sparsity_of(g.center)
        requested[g.center] = sparsity
        if sparsity <= 0:
            continue
        if skip and g.center in skip:
            log.warning("group %s left whole: %s", g.center, skip[g.center])
            continue
        whole = recipe.drops_conv_groups(g)
        keep = group_keep(g, sparsity, recipe.settings.round_to, whole)
        if keep >= g.channels:
            continue
        kept[g.center] = top_channels(g, score(g, inputs), keep, whole)
    return PruningPlan(groups, kept, requested, drops)


__all__ = ["PruningPlan", "calibration_for", "group_keep", "make_plan", "model_tensors", "rank_inputs",
           "top_channels"]
