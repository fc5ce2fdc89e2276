"""``--target-latency`` in a closed loop: plan on the table, measure the plan, correct, repeat.

The table predicts a model's time as a sum of per-group pieces (:mod:`.latency_table`). What it
cannot see — residual adds, squeeze-and-excitation scales, layer scale, permutes between the
timed layers, caches that a smaller model fits in — makes the sum promise more (or less) than
the whole pruned model delivers. So after the table's plan, the candidate model is built (a
shrunk copy) and timed against the dense model with the tables' own routine
(:func:`~.latency.time_ms`, alternating rounds, the median of the per-round ratios, so a change
of load between rounds cancels); if the measured fraction misses the target by more than the
tolerance, the *planning* target is corrected and the table plans again. The correction is a
secant on (planning target -> measured fraction), a proportional step while there is only one
point, and a bisection whenever the secant leaves a bracket around the target. It stops within
the tolerance, after ``max_steps`` corrections, when the time budget is spent or when the table
gives the same plan again; the measured plan closest to the target is kept. A plan measured
within the tolerance is timed once more, independently and with more rounds, before the loop
trusts it: one timing of a whole model on a shared machine can be off by the tolerance itself.
If the confirmation misses, the loop corrects on from the mean of the two (a step like any other).

Under a MAC budget (``--target-macs`` with a table) the table's latency-aware plan is timed
against the uniform plan at the same budget (:func:`choose_faster`) and the faster is kept, so
a table whose per-group sum mispredicts a model can never make the plan slower than uniform.

Measuring happens where the table was measured: the same device (by name), dtype, batch,
threads and memory layout; :func:`check_machine` refuses anything else, since correcting one
machine's table with another machine's timings would be neither.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable, Mapping

from torch import nn

from ..errors import ConfigError
from ..groups import ChannelGroups
from .latency_measure import (alternate, device_name, median_ratio, place_inputs, place_model, placed_shrunk,
                              timing_plan)
from .latency_plan import LatencyPlan
from .latency_table import LatencyTable, Setup

log = logging.getLogger(__name__)
LOWEST = 0.01  # the smallest planning target a correction may ask for
ROUNDS = 5       # alternating rounds of one whole-model timing (benchmarks/latency_aware.py's default too)
RUN_TIME = 0.5   # seconds per model per round: --latency-run-time's default
CONFIRM = 2      # a confirmation times CONFIRM x ROUNDS rounds
MIN_SLOPE = 0.25  # a secant flatter than this (measured per planned) is noise: step proportionally instead


@dataclasses.dataclass
class Step:
    planned_for: float  # the target the table planned for
    predicted: float    # the table's fraction for the plan it chose
    measured: float     # the whole model's measured fraction
    confirmed: float | None = None  # the confirming measurement, when the first was within the tolerance

    @property
    def fraction(self) -> float:
        """What the loop believes the plan measures: both measurements weighted by their rounds
        when confirmed (the confirmation ran :data:`CONFIRM` times as many)."""
        if self.confirmed is None:
            return self.measured
        return (self.measured + CONFIRM * self.confirmed) / (1 + CONFIRM)


@dataclasses.dataclass
class Refined:
    plan: LatencyPlan
    measured: float
    planned_for: float
    steps: list[Step]

    def record(self) -> dict[str, float | int | str]:
        """What a recipe keeps of the loop (beside the table's ``predicted`` fraction)."""
        return {"measured": round(self.measured, 4), "planned_for": round(self.planned_for, 4),
                "steps": len(self.steps), "history": self.history()}

    def history(self) -> str:
        """The loop's steps in one line, for the recipe: ``planned -> predicted / measured``."""
        return "; ".join(f"{s.planned_for:.3f} -> {s.predicted:.3f} / {s.measured:.3f}"
                         + ("" if s.confirmed is None else f", confirmed {s.confirmed:.3f}") for s in self.steps)


class WholeModelTimer:
    """Measured fractions of the dense model's time for kept counts per group: shrunk copies
    (the first ``k`` channels of each group kept — timing does not care which) timed with the
    dense model back to back in alternating rounds (:func:`~.latency_measure.alternate`), the
    median of the per-round ratios. ``benchmarks/latency_aware.py`` times the same way."""

    def __init__(self, model: nn.Module, inputs: Any, groups: ChannelGroups, setup: Setup,
                 min_run_time: float = RUN_TIME, statistic: str = "median", rounds: int = ROUNDS) -> None:
        self.model, self.groups, self.setup = model, groups, setup
        self.min_run_time, self.statistic, self.rounds = min_run_time, statistic, rounds
        self.dense = place_model(model, setup)
        self.inputs = place_inputs(inputs, setup)

    def __call__(self, plan: LatencyPlan) -> float:
        return median_ratio(self._rows([plan], self.rounds), 1)

    def confirm(self, plan: LatencyPlan) -> float:
        """A second, independent measurement of ``plan`` with :data:`CONFIRM` times the rounds."""
        return median_ratio(self._rows([plan], CONFIRM * self.rounds), 1)

    def compare(self, first: LatencyPlan, second: LatencyPlan) -> tuple[float, float, float]:
        """Both plans' fractions of dense and ``second``'s time over ``first``'s, all three the
        medians of per-round ratios, the dense model and both plans timed in every round."""
        rows = self._rows([first, second], self.rounds)
        return median_ratio(rows, 1), median_ratio(rows, 2), median_ratio(rows, 2, 1)

    def _rows(self, plans: list[LatencyPlan], rounds: int) -> list[list[float]]:
        try:
            placed = [self.dense] + [placed_shrunk(self.model, timing_plan(self.groups, p.kept, p.whole), self.setup)
                                     for p in plans]
            return alternate(placed, self.inputs, self.setup, rounds, self.min_run_time, self.statistic)
        except Exception as exc:  # noqa: BLE001 - a model whose code fixes a size the table's plan changes
            raise ConfigError(f"cannot time the planned model ({type(exc).__name__}: {exc}); plan from the table "
                              "alone with --latency-refine 0", key="--latency-refine") from exc


def check_machine(table: LatencyTable, batch: int | None) -> None:
    """Refuse to measure unless this machine and these inputs are what the table was keyed by."""
    import torch

    setup = table.setup
    hint = "measure a table here (`pruneconf latency`) or plan from the table alone with --latency-refine 0"
    if setup.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"the table was measured on {setup.device} ({table.device_name}) and this machine has "
                          f"no CUDA: {hint}", key="--latency-table")
    here = device_name(setup.device)
    if here != table.device_name:
        raise ConfigError(f"the table was measured on '{table.device_name}', this machine's {setup.device} is "
                          f"'{here}': {hint}", key="--latency-table")
    if batch is not None and batch != setup.batch:
        raise ConfigError(f"the table was measured at batch {setup.batch}, the recipe's inputs have batch {batch}: "
                          f"{hint}", key="--latency-table")


def _next_target(steps: list[Step], target: float) -> float:
    """The planning target that should measure ``target``: a secant through the two latest
    points, bisection when it leaves the tightest bracket around the target, a proportional
    step from the latest point when there is one point or the two slope the wrong way or
    barely at all (noise: a near-flat secant sends the target far off; stepping from the
    latest, not the best, point keeps the loop from planning it again); never more than half
    way from the latest planning target to 0 or 1."""
    below = [s for s in steps if s.fraction < target]
    above = [s for s in steps if s.fraction > target]
    lo = max(below, key=lambda s: s.fraction) if below else None
    hi = min(above, key=lambda s: s.fraction) if above else None
    a, b = steps[-2:] if len(steps) > 1 else (None, steps[-1])
    guess = None
    if a is not None and b.fraction != a.fraction:
        slope = (b.fraction - a.fraction) / (b.planned_for - a.planned_for) if b.planned_for != a.planned_for else 0
        if slope > MIN_SLOPE:
            guess = b.planned_for + (target - b.fraction) / slope
    if guess is None:  # the latest point alone: the model the loop stands at
        guess = b.planned_for * target / b.fraction
    # at most half way to 0 or to 1 per step: a table that over-promises by 2x (convnext_tiny:
    # 0.238 measured for 0.5) would otherwise send the loop to 1.0, the dense model, a wasted step
    guess = min(max(guess, b.planned_for / 2), (1 + b.planned_for) / 2)
    if lo is not None and hi is not None:
        low, high = sorted((lo.planned_for, hi.planned_for))
        if not low < guess < high:
            guess = (low + high) / 2
    return min(1.0, max(LOWEST, guess))


def refine_plan(plan_for: Callable[[float], LatencyPlan], measure: Callable[[LatencyPlan], float],
                target: float, tolerance: float = 0.05, max_steps: int = 4, budget_s: float = 300.0,
                clock: Callable[[], float] = time.monotonic,
                confirm: Callable[[LatencyPlan], float] | None = None) -> Refined:
    """Plan for ``target`` with the table, then correct the planning target on measured fractions.

    A plan measured within ``tolerance`` is measured again with ``confirm`` (default ``measure``)
    and judged by both measurements together (:attr:`Step.fraction`: on this VM two timings of one
    plan, quiet, differ by up to 14 %); if they miss, that counts as a step and the loop corrects
    on from them.
    No measurement starts once ``budget_s`` is spent."""
    started, confirm = clock(), confirm or measure
    planned, steps, plans, missed = target, [], [], 0

    def within(fraction: float) -> bool:
        return abs(fraction / target - 1) <= tolerance

    def spent() -> bool:
        if clock() - started > budget_s:
            log.info("latency loop: the %.0f s budget is spent, closest measured is kept", budget_s)
            return True
        return False

    while True:
        try:
            plan = plan_for(planned)
        except ConfigError as exc:
            if not steps:
                raise
            log.info("latency loop: planning for %.3f failed (%s); keeping the closest measured plan",
                     planned, exc.message)
            break
        if any(p.kept == plan.kept and p.whole == plan.whole for p in plans):
            log.info("latency loop: the table plans the same counts for %.3f as before; stopping", planned)
            break
        step = Step(planned, plan.fraction, measure(plan))
        steps.append(step)
        plans.append(plan)
        log.info("latency loop step %d: planned for %.3f, table predicts %.3f, measured %.3f (target %.3f)",
                 len(steps) - 1, planned, plan.fraction, step.measured, target)
        if within(step.measured):
            if spent():
                log.info("latency loop: step %d is not confirmed", len(steps) - 1)
                break
            step.confirmed = confirm(plan)
            log.info("latency loop step %d confirmed: measured %.3f again, %.3f on average", len(steps) - 1,
                     step.confirmed, step.fraction)
            if within(step.fraction):
                break
            missed += 1
        if len(steps) + missed > max_steps:
            log.info("latency loop: %d corrections spent, closest measured is kept", max_steps)
            break
        if spent():
            break
        planned = _next_target(steps, target)
    best = min(range(len(steps)), key=lambda i: abs(steps[i].fraction - target))
    if not within(steps[best].fraction):
        log.warning("latency loop: closest measured plan is at %.3f of dense, outside %.0f%% of the target %.3f",
                    steps[best].fraction, 100 * tolerance, target)
    return Refined(plans[best], steps[best].fraction, steps[best].planned_for, steps)


@dataclasses.dataclass
class Chosen:
    """The plan kept at a MAC budget, and what timing the two candidates measured."""
    winner: LatencyPlan
    plan: str                     # "latency-aware" or "uniform"
    aware: float | None = None    # measured fractions of dense (None: identical counts, not timed)
    uniform: float | None = None
    speedup: float | None = None  # the aware plan's speed over the uniform one's

    def record(self) -> dict[str, float | str]:
        """What a recipe keeps of the choice (beside the table's ``predicted`` fraction of the kept plan)."""
        if self.speedup is None:
            return {"kept_plan": f"{self.plan} (the uniform plan's counts: not timed)"}
        kept = self.aware if self.plan == "latency-aware" else self.uniform
        return {"kept_plan": self.plan, "measured": round(kept, 4), "measured_aware": round(self.aware, 4),
                "measured_uniform": round(self.uniform, 4), "aware_speedup": round(self.speedup, 4)}


def choose_faster(aware: LatencyPlan, uniform: LatencyPlan, channels: Mapping[str, int],
                  compare: Callable[[LatencyPlan, LatencyPlan], tuple[float, float, float]]) -> Chosen:
    """Of two plans at the same MAC budget, the faster measured: ``compare(uniform, aware)`` gives
    both fractions of dense and aware's time over uniform's (see :meth:`WholeModelTimer.compare`);
    a tie keeps the latency-aware plan. Identical plans (groups left whole ignored) are not timed."""
    def pruned(plan: LatencyPlan) -> tuple[dict[str, int], frozenset[str]]:
        return {c: k for c, k in plan.kept.items() if k < channels[c]}, plan.whole

    if pruned(aware) == pruned(uniform):
        log.info("the latency-aware and the uniform plan keep the same counts: nothing to time")
        return Chosen(aware, "latency-aware")
    uniform_fraction, aware_fraction, ratio = compare(uniform, aware)
    chosen = Chosen(aware, "latency-aware", aware_fraction, uniform_fraction, 1 / ratio) if ratio <= 1 else \
        Chosen(uniform, "uniform", aware_fraction, uniform_fraction, 1 / ratio)
    log.info("at the same MACs the latency-aware plan measured %.3f of dense, the uniform plan %.3f (aware %.2fx "
             "as fast): keeping the %s plan", aware_fraction, uniform_fraction, 1 / ratio, chosen.plan)
    return chosen
