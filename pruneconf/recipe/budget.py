"""``--target-macs``: per-group sparsities that land the model on a MAC budget.

The search works on kept channel counts with :class:`CostModel` (exact for conv/linear):
a bisection on one sparsity shared by every group finds the two neighbouring settings
around the target, then single rounding steps (one channel, or ``round_to``) are taken
from the groups whose step costs the fewest MACs until the target is crossed, and the
closer side is kept. The chosen counts are written back as per-group sparsities that
reproduce them exactly (through ``kept_channels``), so the recipe is reproducible without
planning again; ``settings.target_macs`` records the budget.
"""
from __future__ import annotations

import logging
from typing import AbstractSet, Mapping

from ruamel.yaml.comments import CommentedMap

from ..errors import ConfigError
from ..analysis.predict import CostModel
from ..groups import ChannelGroups, Group
from .load import Recipe
from .plan import blocks_round_to, kept_blocks, kept_channels

log = logging.getLogger(__name__)


class Budget:
    """Kept-count arithmetic for one model and recipe: floors, steps and MACs."""

    def __init__(self, costs: CostModel, parts: list[Group], recipe: Recipe) -> None:
        self.costs, self.parts, self.round_to = costs, parts, recipe.settings.round_to
        self.whole = recipe.dropping_conv_groups(parts)
        self.floors = {g.center: self.count(g, recipe.max_sparsity_of(g.center)) for g in parts}

    def count(self, g: Group, sparsity: float) -> int:
        """Channels ``g`` keeps at ``sparsity``: whole conv groups where the recipe drops them."""
        if g.center in self.whole:
            return kept_blocks(g.experts, g.block_width, sparsity, self.round_to)
        return kept_channels(g.channels, sparsity, self.round_to)

    def uniform(self, sparsity: float) -> dict[str, int]:
        return {g.center: max(self.floors[g.center], self.count(g, sparsity)) for g in self.parts}

    def step_down(self, g: Group, keep: int) -> int:
        """The next smaller count the recipe can produce (or ``keep`` at the floor)."""
        step = g.block_width if g.center in self.whole else self.round_to
        lower = keep - 1 if step == 1 else (keep - 1) // step * step
        return max(self.floors[g.center], lower)

    def macs(self, kept: Mapping[str, int]) -> float:
        return self.costs.macs(kept, self.whole)


def taking_part(groups: ChannelGroups, recipe: Recipe, skip: Mapping[str, str]) -> list[Group]:
    """Prunable groups that may lose channels: not skipped, not excluded, ``max_sparsity`` above 0."""
    return [g for g in groups.prunable if g.center not in skip and not recipe.is_excluded(g.center)
            and recipe.max_sparsity_of(g.center) > 0]


def _bisect(budget: Budget, goal: float) -> dict[str, int]:
    """The largest shared sparsity (to 1e-9) whose MACs are still at or above ``goal``."""
    lo, hi = 0.0, 1.0 - 1e-9
    for _ in range(40):
        mid = (lo + hi) / 2
        if budget.macs(budget.uniform(mid)) >= goal:
            lo = mid
        else:
            hi = mid
    return budget.uniform(lo)


def _refine(budget: Budget, kept: dict[str, int], goal: float) -> dict[str, int]:
    """Take the cheapest single steps until below ``goal``; return the side closer to it."""
    now = budget.macs(kept)
    while now > goal:
        moves = []
        for g in budget.parts:
            lower = budget.step_down(g, kept[g.center])
            if lower < kept[g.center]:
                trial = {**kept, g.center: lower}
                moves.append((now - budget.macs(trial), g.order, trial))
        if not moves:
            break
        _, _, trial = min(moves, key=lambda m: (m[0], m[1]))
        after = budget.macs(trial)
        if goal - after > now - goal:  # stepping would land further away than staying
            break
        kept, now = trial, after
    return kept


def plan_budget(groups: ChannelGroups, recipe: Recipe, target: float,
                skip: Mapping[str, str] | None = None) -> dict[str, int]:
    """Kept channels per taking-part group so that MACs ≈ ``target`` × dense MACs."""
    if not 0 < target <= 1:
        raise ConfigError(f"expected a fraction of the dense MACs in (0, 1], got {target!r}", key="--target-macs")
    if recipe.settings.mode == "global":
        raise ConfigError("a MAC budget chooses per-group sparsities: use `mode: uniform`", key="settings.mode")
    costs = CostModel(groups)
    budget = Budget(costs, taking_part(groups, recipe, skip or {}), recipe)
    dense = costs.macs({})
    goal = target * dense
    lowest = budget.macs(budget.floors)
    if lowest > goal * 1.01:
        raise ConfigError(f"cannot reach {target:.1%} of the MACs: at max_sparsity every prunable group "
                          f"leaves {lowest / dense:.1%}; raise max_sparsity or the target", key="--target-macs")
    kept = _refine(budget, _bisect(budget, goal), goal)
    log.info("MAC budget %.1f%%: planned %.2f%% of %s MACs", 100 * target, 100 * budget.macs(kept) / dense,
             f"{dense:,}")
    return kept


def sparsity_for(channels: int, keep: int, round_to: int = 1) -> float:
    """A short sparsity value for which ``kept_channels`` gives exactly ``keep``."""
    exact = (channels - keep) / channels
    for candidate in (round(exact, 4), round((channels - keep + 0.5) / channels, 4), round(exact, 8), exact):
        if kept_channels(channels, candidate, round_to) == keep and 0 <= candidate < 1:
            return candidate
    raise ValueError(f"no sparsity keeps {keep} of {channels} channels with round_to {round_to}")


def write_budget(doc: CommentedMap, groups: ChannelGroups, kept: Mapping[str, int], target: float,
                 round_to: int, whole: AbstractSet[str] = frozenset()) -> None:
    """Store the chosen counts as group sparsities and record the target under ``settings``."""
    write_group_sparsities(doc, groups, kept, round_to, whole)
    settings = doc.setdefault("settings", CommentedMap())
    settings["target_macs"] = target
    settings.yaml_add_eol_comment("group sparsities below were planned for this fraction of the dense MACs",
                                  "target_macs")


def write_group_sparsities(doc: CommentedMap, groups: ChannelGroups, kept: Mapping[str, int], round_to: int,
                           whole: AbstractSet[str] = frozenset()) -> None:
    """``groups.<center>.sparsity`` values that make ``kept_channels`` keep exactly ``kept``; the
    groups in ``whole`` get ``conv_groups: whole`` and the sparsity of their conv groups
    (:func:`~.plan.kept_blocks`; a count between whole groups goes to the nearer)."""
    entries = doc.setdefault("groups", CommentedMap())
    for center, keep in kept.items():
        if not isinstance(entries.get(center), dict):
            entries[center] = CommentedMap()
        g = groups[center]
        if center in whole:
            entries[center]["sparsity"] = sparsity_for(g.experts, max(1, round(keep / g.block_width)),
                                                       blocks_round_to(round_to, g.block_width))
            entries[center]["conv_groups"] = "whole"
        else:
            entries[center]["sparsity"] = sparsity_for(g.channels, keep, round_to)
