"""``--target-latency``: per-group sparsities planned on a measured latency table.

A greedy knapsack in the spirit of HALP: every group starts whole; each step removes one
rounding step of channels (the group's learned ``round_to``: the table's measured fast step,
combined with the recipe's) from the group where it costs the least importance per
millisecond saved, importance being the recipe's metric (any of them, data metrics too),
each group's scores divided by their mean so groups compete by rank, not by scale. The
time a step saves is predicted from the table, with the neighbouring groups' current
widths (:class:`~.latency_table.Predictor`). Steps stop once the predicted latency (or, with
``--target-macs``, the MACs) reach the target; the closer of the last two settings is kept.
Under a MAC budget the total of MACs removed is fixed, so a step's price is also multiplied
by the MACs it removes per millisecond it saves, to the power ``speed_weight``: the budget is
spent where MACs cost time (norms, activations and depthwise layers around them, layers at
fast widths). A larger weight trades importance for speed at the budget: on regnet_y_1_6gf's
batch-8 table, weight 1 predicted 0.60 of dense, 5 predicted 0.51. By default
(:func:`plan_mac_budget`, weight ``None``) the weight is the smallest from 1 to 16 whose plan the
table predicts as fast as the MACs promise: a user who halves the MACs gets half the latency
where the table says it can be had, and otherwise the most importance (weight 1).
The chosen counts are written as group sparsities that reproduce them exactly, and the
recipe records the target and the table's device and hash.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Collection, Iterable, Mapping

import numpy as np
from ruamel.yaml.comments import CommentedMap

from ..analysis.predict import CostModel
from ..errors import ConfigError
from ..groups import ChannelGroups, Group
from ..masks.global_rank import normalised
from ..recipe.budget import plan_budget, taking_part, write_group_sparsities
from ..recipe.load import Recipe
from ..recipe.plan import kept_blocks, kept_channels
from .latency_table import LatencyTable, Predictor

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LatencyPlan:
    kept: dict[str, int]
    predicted_ms: float
    dense_ms: float
    round_to: dict[str, int]
    whole: frozenset[str] = frozenset()  # groups that lose whole conv groups (``conv_groups: whole``)
    speed_weight: float | None = None  # under a MAC budget: the weight that planned it

    @property
    def fraction(self) -> float:
        return self.predicted_ms / self.dense_ms if self.dense_ms else 1.0


def _cumulative(group: Group, importance: np.ndarray, whole: bool) -> np.ndarray:
    """``out[n]``: the importance of the ``n`` best channels (what keeping ``n`` keeps) or, with
    ``whole``, of the ``n`` best conv groups by their summed importance."""
    units = np.bincount(group.blocks, importance, group.experts) if whole else importance
    return np.concatenate([[0.0], np.cumsum(np.sort(units)[::-1])])


def importance_lost(groups: Iterable[Group], scores: Mapping[str, np.ndarray], kept: Mapping[str, int],
                    whole: Collection[str] = frozenset()) -> float:
    """What a plan costs by the planner's own measure: the mean-normalised importance of the
    channels it removes (the best ``kept`` stay; whole conv groups by their summed importance
    in ``whole`` groups), per channel of ``groups``. 0 keeps everything; removing a uniformly
    random half of every group would lose about 0.5. Comparable across plans of one model and
    metric only."""
    removed = total = 0.0
    for g in groups:
        dropping = g.center in whole
        cum = _cumulative(g, normalised(np.asarray(scores[g.center], dtype=float)), dropping)
        removed += cum[-1] - cum[kept.get(g.center, g.channels) // (g.block_width if dropping else 1)]
        total += g.channels
    return removed / total if total else 0.0


class _Greedy:
    """The state of the search: current counts, and each group's next step priced.

    A group whose blocks are whole conv groups (``Group.whole_conv_groups``), measured both
    ways in the table, may step either way: thinning every conv group (its learned step) or
    dropping one whole conv group (importance summed per conv group); its first step fixes
    the way, unless the recipe already did (``conv_groups``)."""

    def __init__(self, parts: list[Group], table: LatencyTable, recipe: Recipe,
                 scores: Mapping[str, np.ndarray], macs: CostModel | None = None, speed_weight: float = 1.0) -> None:
        self.parts = {g.center: g for g in parts}
        self.macs = macs  # under a MAC budget: also price the MACs a step spends
        self.speed_weight = speed_weight
        self.predictor = Predictor(table)
        self.ways = {g.center: _ways(g, table, recipe) for g in parts}
        self.step: dict[tuple[str, bool], int] = {}
        self.floor: dict[tuple[str, bool], int] = {}
        self.cum: dict[tuple[str, bool], np.ndarray] = {}
        for g in parts:
            importance = normalised(np.asarray(scores[g.center], dtype=float))
            self.step[g.center, False] = _step(table.groups[g.center].round_to, recipe.settings.round_to, g.channels)
            self.floor[g.center, False] = kept_channels(g.channels, recipe.max_sparsity_of(g.center),
                                                        self.step[g.center, False])
            self.cum[g.center, False] = _cumulative(g, importance, False)
            if True in self.ways[g.center]:
                self.step[g.center, True] = g.block_width
                self.floor[g.center, True] = kept_blocks(g.experts, g.block_width, recipe.max_sparsity_of(g.center),
                                                         recipe.settings.round_to)
                self.cum[g.center, True] = _cumulative(g, importance, True)
        self.kept: dict[str, int] = {}
        self.whole: set[str] = set()
        self.neighbours = {c: {n for u in table.groups[c].units() for n in self.predictor.touching[u]}
                           & set(self.parts) for c in self.parts}
        self.moves: dict[str, tuple[float, int, bool] | None] = {c: self._price(c) for c in self.parts}

    def keep(self, center: str) -> int:
        return self.kept.get(center, self.parts[center].channels)

    def _price(self, center: str) -> tuple[float, int, bool] | None:
        """(importance lost per millisecond saved, new count, whole) of the group's cheapest next
        step, or None."""
        ways = (center in self.whole,) if center in self.kept else self.ways[center]
        priced = [p for p in (self._price_way(center, whole) for whole in ways) if p is not None]
        return min(priced) if priced else None

    def _price_way(self, center: str, whole: bool) -> tuple[float, int, bool] | None:
        now, step = self.keep(center), self.step[center, whole]
        lower = (now - 1) // step * step
        if lower < max(self.floor[center, whole], 1):
            return None
        ways = self.whole | {center} if whole else self.whole - {center}
        saved = self.predictor.saving(center, self.kept, lower, ways)
        if saved <= 1e-9:
            return None
        per = step if whole else 1  # the cumulative importance of whole conv groups counts conv groups
        cum = self.cum[center, whole]
        price = (cum[now // per] - cum[lower // per]) / saved
        if self.macs is not None:  # the budget fixes the MACs removed: each should buy the most time
            removed = self.macs.macs(self.kept, self.whole) - self.macs.macs({**self.kept, center: lower}, ways)
            price *= (max(removed, 0.0) / saved) ** self.speed_weight
        return price, lower, whole

    def advance(self) -> bool:
        """Take the cheapest step; False when no step saves time."""
        order = {c: i for i, c in enumerate(self.parts)}
        priced = [(m[0], order[c], c, m[1], m[2]) for c, m in self.moves.items() if m is not None]
        if not priced:
            return False
        _, _, center, lower, whole = min(priced)
        self.kept[center] = lower
        if whole:
            self.whole.add(center)
        for c in self.neighbours[center] | {center}:
            self.moves[c] = self._price(c)
        return True

    def state(self) -> tuple[dict[str, int], set[str]]:
        return dict(self.kept), set(self.whole)

    def restore(self, state: tuple[dict[str, int], set[str]]) -> None:
        self.kept, self.whole = dict(state[0]), set(state[1])


def _ways(group: Group, table: LatencyTable, recipe: Recipe) -> tuple[bool, ...]:
    """How ``group`` may lose channels: (False,) inside its conv groups, (True,) whole conv
    groups, or both for the planner to choose; the recipe's ``conv_groups`` (the group's own or
    a ``whole`` setting) fixes it."""
    measured = table.groups[group.center].whole is not None
    if group.center in recipe.conv_groups or recipe.settings.conv_groups == "whole":
        whole = recipe.drops_conv_groups(group)
        if whole and not measured:
            raise ConfigError(f"the table has no whole-conv-group timings for group {group.center}: measure the "
                              "table again with this pruneconf", key="--latency-table")
        return (whole,)
    return (False, True) if group.whole_conv_groups and measured else (False,)


def _step(measured: int, recipe_round_to: int, channels: int) -> int:
    return max(1, min(channels, math.lcm(measured, recipe_round_to)))


def plan_latency(groups: ChannelGroups, recipe: Recipe, table: LatencyTable, scores: Mapping[str, np.ndarray],
                 target_latency: float | None = None, target_macs: float | None = None,
                 skip: Mapping[str, str] | None = None, speed_weight: float = 1.0) -> LatencyPlan:
    """Kept channels per group so the table predicts ``target_latency`` × the dense latency
    (or, given ``target_macs``, so the MACs reach that fraction, spending it where it buys most
    time; ``speed_weight`` is the power of a step's MACs removed per ms saved in its price)."""
    if (target_latency is None) == (target_macs is None):
        raise ConfigError("give one target: a latency or a MAC fraction", key="--target-latency")
    target = target_latency if target_latency is not None else target_macs
    key = "--target-latency" if target_latency is not None else "--target-macs"
    if not 0 < target <= 1:
        raise ConfigError(f"expected a fraction of the dense model in (0, 1], got {target!r}", key=key)
    if recipe.settings.mode == "global":
        raise ConfigError("a latency plan chooses per-group sparsities: use `mode: uniform`", key="settings.mode")
    parts = [g for g in taking_part(groups, recipe, skip or {}) if g.center in table.groups]
    for g in parts:
        if table.groups[g.center].channels != g.channels:
            raise ConfigError(f"the table has {table.groups[g.center].channels} channels for group {g.center}, the "
                              f"model {g.channels}: measure the table again", key="--latency-table")
    costs = CostModel(groups)
    greedy = _Greedy(parts, table, recipe, scores, costs if target_macs is not None else None, speed_weight)
    dense_macs = costs.macs({})

    def distance() -> float:
        if target_latency is not None:
            return greedy.predictor.ms(greedy.kept, greedy.whole) / table.dense_ms - target
        return costs.macs(greedy.kept, greedy.whole) / dense_macs - target

    now = distance()
    while now > 0:
        before = greedy.state()
        if not greedy.advance():
            raise ConfigError(f"cannot reach {target:.1%}: the table predicts at best {now + target:.1%} with "
                              "every group at max_sparsity or no step left that saves time", key=key)
        after = distance()
        if after < 0 and -after > now:  # the last step overshot further than stopping short
            greedy.restore(before)
            break
        now = after
    kept = {c: greedy.keep(c) for c in greedy.parts}
    for g in taking_part(groups, recipe, skip or {}):
        if g.center not in kept:
            log.warning("group %s has no timings in the latency table: left whole", g.center)
            kept[g.center] = g.channels
    whole = frozenset(c for c in greedy.whole if kept[c] < groups[c].channels)
    steps = {c: greedy.step[c, c in whole] for c in greedy.parts}
    plan = LatencyPlan(kept, greedy.predictor.ms(kept, whole), table.dense_ms, steps, whole,
                       speed_weight if target_macs is not None else None)
    log.info("latency plan: predicted %.3f of %.3f ms (%.1f%%), MACs %.1f%% of dense; %d groups lose whole conv "
             "groups; importance lost %.3f", plan.predicted_ms, plan.dense_ms, 100 * plan.fraction,
             100 * costs.macs(kept, whole) / dense_macs, len(whole), importance_lost(parts, scores, kept, whole))
    return plan


def uniform_mac_plan(groups: ChannelGroups, recipe: Recipe, table: LatencyTable, target_macs: float,
                     skip: Mapping[str, str] | None = None) -> LatencyPlan:
    """What ``--target-macs`` plans without a table (:func:`~pruneconf.recipe.budget.plan_budget`),
    as a plan the table prices: the baseline the latency-aware plan is compared with."""
    kept = plan_budget(groups, recipe, target_macs, skip or {})
    whole = recipe.dropping_conv_groups(groups[c] for c, k in kept.items() if k < groups[c].channels)
    return LatencyPlan(kept, Predictor(table).ms(kept, whole), table.dense_ms, {}, whole)


SPEED_WEIGHTS = (1.0, 16.0)  # the weights the default search spans (``--speed-weight auto``)
SEARCH_STEPS = 6  # bisections after the ends: the weight to within (16 - 1) / 64


def plan_mac_budget(groups: ChannelGroups, recipe: Recipe, table: LatencyTable, scores: Mapping[str, np.ndarray],
                    target_macs: float, skip: Mapping[str, str] | None = None, speed_weight: float | None = None,
                    tolerance: float = 0.05) -> LatencyPlan:
    """The latency-aware plan at ``target_macs`` of the dense MACs, with ``speed_weight`` or, given
    None, with the smallest weight in :data:`SPEED_WEIGHTS` whose plan the table predicts at most
    ``target_macs`` x (1 + ``tolerance``) of the dense latency, the speedup the MACs promise.

    Why search: weight 1 keeps the most importance and is already that fast on most nets (on the
    batch-8 CPU tables of resnet50, mobilenet_v2, efficientnet_b0 and convnext_tiny it predicted
    0.39-0.45 at half the MACs); on RegNets the budget buys speed only by dropping whole conv
    groups, which weight 1 rarely picks (0.60). The smallest weight that is fast enough loses the
    least importance for it. Found by bisection (the predicted fraction falls with the weight,
    not strictly: a plan that misses is never returned in place of one that met the goal); if even
    the largest misses, the faster of the two ends is returned and the log says so."""
    def plan(weight: float) -> LatencyPlan:
        return plan_latency(groups, recipe, table, scores, target_macs=target_macs, skip=skip, speed_weight=weight)

    if speed_weight is not None:
        return plan(speed_weight)
    goal = target_macs * (1 + tolerance)
    low, high = SPEED_WEIGHTS
    best = plan(low)
    if best.fraction <= goal:
        return best
    fastest = plan(high)
    if fastest.fraction > goal:
        log.info("speed weight: even %g predicts %.3f of dense, above the %.3f the MACs promise; keeping the "
                 "faster plan", high, fastest.fraction, goal)
        return min(best, fastest, key=lambda p: p.fraction)
    for _ in range(SEARCH_STEPS):
        middle = (low + high) / 2
        candidate = plan(middle)
        if candidate.fraction <= goal:
            high, fastest = middle, candidate
        else:
            low = middle
    log.info("speed weight %.3g: the smallest that the table predicts as fast as the MACs promise (%.3f of dense, "
             "goal %.3f)", fastest.speed_weight, fastest.fraction, goal)
    return fastest


def write_latency_plan(doc: CommentedMap, groups: ChannelGroups, plan: LatencyPlan, table: LatencyTable,
                       round_to: int, target_latency: float | None, target_macs: float | None,
                       measured: Mapping[str, float | int | str] | None = None) -> None:
    """Store the counts as group sparsities; record the target, which table planned them and,
    from the closed loop (:mod:`.latency_loop`), what was measured (``measured``, ``planned_for``,
    ``steps``, ``history``)."""
    write_group_sparsities(doc, groups, plan.kept, round_to, plan.whole)
    for center, step in plan.round_to.items():
        g = groups[center]
        if center in plan.whole:
            doc["groups"][center].yaml_add_eol_comment(
                f"keeps {plan.kept[center] // step} of {g.experts} conv groups of {step}: measured faster per "
                "importance than thinning every conv group", "conv_groups")
        elif step > 1:
            doc["groups"][center].yaml_add_eol_comment(
                f"keeps {plan.kept[center]} of {g.channels}: a multiple of {step}, the step the "
                "table measured as fast", "sparsity")
    settings = doc.setdefault("settings", CommentedMap())
    if target_latency is not None:
        settings["target_latency"] = target_latency
        settings.yaml_add_eol_comment("group sparsities below were planned for this fraction of the measured "
                                      "dense latency", "target_latency")
    else:
        settings["target_macs"] = target_macs
    record = CommentedMap([("device", table.setup.device), ("device_name", table.device_name),
                           ("setup", table.setup.key), ("hash", table.hash),
                           ("predicted", round(plan.fraction, 4))])
    record.update(measured or {})
    settings["latency_table"] = record
