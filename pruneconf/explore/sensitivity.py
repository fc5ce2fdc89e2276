"""``pruneconf sensitivity``: prune one group at a time and watch the user's metric.

The metric is any ``fn(model) -> float``, higher is better (accuracy, negative loss...),
named as ``module:function`` on the command line; it is called on a masked copy of the
model in eval mode under ``torch.no_grad()`` (masked channels are exactly zero, so it computes what the shrunk model
would). The model passed in is never changed. A group's sensitivity is its mean metric
drop over the tested sparsities; a MAC budget is then spent on the least sensitive groups
first (:func:`budget_by_sensitivity`).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import logging
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .._progress import progress
from ..distributed import gather_shares, rank_and_world
from ..errors import ConfigError
from ..groups import ChannelGroups
from ..masks import calibration_for, make_plan, register_masks
from ..recipe.budget import Budget, taking_part
from ..recipe.load import Recipe
from ..analysis.predict import CostModel

log = logging.getLogger(__name__)

Evaluate = Callable[[nn.Module], float]


@dataclasses.dataclass
class Sensitivity:
    baseline: float
    sparsities: tuple[float, ...]
    scores: dict[str, dict[float, float]]  # group center -> sparsity -> metric
    kept: dict[str, dict[float, int]]
    calibration_batches: int | None = None  # batches a data metric ranked by

    def drop(self, center: str) -> float:
        """Mean metric lost over the tested sparsities (larger is more sensitive)."""
        return sum(self.baseline - v for v in self.scores[center].values()) / len(self.sparsities)

    def ranking(self) -> list[str]:
        """Group centers, least sensitive first (ties keep model order)."""
        return sorted(self.scores, key=self.drop)


def _single_group(recipe: Recipe, center: str, sparsity: float) -> Recipe:
    settings = dataclasses.replace(recipe.settings, default_sparsity=0.0, mode="uniform", exclude=())
    return dataclasses.replace(recipe, settings=settings, sparsity={center: sparsity})


def _metric(evaluate: Evaluate, model: nn.Module) -> float:
    with torch.no_grad():
        value = evaluate(model)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"the eval function returned {type(value).__name__}, expected a number",
                          key="--eval") from None


def analyse_sensitivity(model: nn.Module, groups: ChannelGroups, recipe: Recipe, evaluate: Evaluate,
                        sparsities: Sequence[float], skip: Mapping[str, str] | None = None,
                        calibration: Any = None) -> Sensitivity:
    """Metric of the model with each group alone pruned at each sparsity (channels ranked by
    the recipe's metric; a data metric's statistics are gathered once from ``calibration``).

    Under ``torch.distributed`` (``torchrun``) the (group, sparsity) points are dealt out
    across the ranks, and every rank returns the whole result (a collective)."""
    work = copy.deepcopy(model).eval()
    stats = calibration_for(work, groups, recipe.settings.metric, calibration)
    result = Sensitivity(_metric(evaluate, work), tuple(sparsities), {}, {},
                         stats.batches if stats is not None else None)
    points = [(g.center, sparsity) for g in taking_part(groups, recipe, skip or {}) for sparsity in sparsities]
    rank, world = rank_and_world()
    if world > 1:
        log.info("rank %d: %d of the %d (group, sparsity) points", rank, len(points[rank::world]), len(points))
    shares = gather_shares(lambda: _scores(work, groups, recipe, evaluate, points[rank::world], stats))
    scores = {}
    for share_rank, share in enumerate(shares):
        scores.update(zip(points[share_rank::world], share))
    for center, sparsity in points:
        score, kept = scores[center, sparsity]
        result.scores.setdefault(center, {})[sparsity] = score
        result.kept.setdefault(center, {})[sparsity] = kept
    for center in result.scores:
        log.debug("%s: mean drop %.4g", center, result.drop(center))
    return result


def _scores(work: nn.Module, groups: ChannelGroups, recipe: Recipe, evaluate: Evaluate,
            points: Sequence[tuple[str, float]], stats: Any) -> list[tuple[float, int]]:
    """(metric, kept channels) of ``work`` with each point's group alone pruned; ``work``'s
    weights are restored after each."""
    dense = {k: v.detach().clone() for k, v in work.state_dict().items()}
    out = []
    for center, sparsity in progress(points, "sensitivity"):
        plan = make_plan(work, groups, _single_group(recipe, center, sparsity), calibration=stats)
        masks = register_masks(work, plan)
        try:
            score = _metric(evaluate, work)
        finally:
            masks.remove()
            work.load_state_dict(dense)
        out.append((score, len(plan.kept.get(center, range(groups[center].channels)))))
    return out


def sensitivity_csv(result: Sensitivity, groups: ChannelGroups) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "channels", "sparsity", "kept", "metric", "drop"])
    writer.writerow(["(dense)", "", 0.0, "", result.baseline, 0.0])
    for center in result.scores:
        for sparsity, value in result.scores[center].items():
            writer.writerow([center, groups[center].channels, sparsity, result.kept[center][sparsity], value,
                             result.baseline - value])
    return out.getvalue()


def budget_by_sensitivity(result: Sensitivity, groups: ChannelGroups, recipe: Recipe,
                          target: float) -> dict[str, int]:
    """Kept channels per group: least sensitive groups go to their largest tested sparsity
    (capped by ``max_sparsity``) until the MACs reach ``target`` of dense; the group that
    crosses the target gets the count that lands closest to it."""
    if not 0 < target <= 1:
        raise ConfigError(f"expected a fraction of the dense MACs in (0, 1], got {target!r}", key="--budget")
    budget = Budget(CostModel(groups), [groups[c] for c in result.ranking()], recipe)
    goal = target * budget.macs({})
    kept: dict[str, int] = {}
    for center in result.ranking():
        g = groups[center]
        floor = budget.count(g, min(max(result.sparsities), recipe.max_sparsity_of(center)))
        if budget.macs({**kept, center: floor}) > goal:
            kept[center] = floor
            continue
        options = sorted({max(floor, budget.count(g, i / g.channels)) for i in range(g.channels)})
        kept[center] = min(options, key=lambda k: abs(budget.macs({**kept, center: k}) - goal))
        return {c: k for c, k in kept.items() if k < groups[c].channels}
    raise ConfigError(f"pruning every group to its largest tested sparsity leaves "
                      f"{budget.macs(kept) / budget.macs({}):.1%} of the MACs, above the budget {target:.1%}; "
                      "test larger sparsities or raise the budget", key="--budget")
