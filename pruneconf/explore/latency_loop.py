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
gives the same plan again; the measured plan closest to the target is kept.

Measuring happens where the table was measured: the same device (by name), dtype, batch,
threads and memory layout; :func:`check_machine` refuses anything else, since correcting one
machine's table with another machine's timings would be neither.
"""
from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from typing import Any, Callable, Mapping

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..groups import ChannelGroups
from ..masks import PruningPlan
from .latency_measure import device_name, model_ms, place_inputs, place_model, placed_shrunk
from .latency_plan import LatencyPlan
from .latency_table import LatencyTable, Setup

log = logging.getLogger(__name__)
LOWEST = 0.01  # the smallest planning target a correction may ask for


@dataclasses.dataclass
class Step:
    planned_for: float  # the target the table planned for
    predicted: float    # the table's fraction for the plan it chose
    measured: float     # the whole model's measured fraction


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
        return "; ".join(f"{s.planned_for:.3f} -> {s.predicted:.3f} / {s.measured:.3f}" for s in self.steps)


class WholeModelTimer:
    """Measured fraction of the dense model's time for kept counts per group: a shrunk copy
    (the first ``k`` channels of each group kept — timing does not care which) timed against
    the dense model, alternating ``rounds`` times, the median of the per-round ratios (on a
    shared machine each timing moves with the load; the ratio of two timed back to back moves less)."""

    def __init__(self, model: nn.Module, inputs: Any, groups: ChannelGroups, setup: Setup,
                 min_run_time: float, statistic: str = "median", rounds: int = 5) -> None:
        self.model, self.groups, self.setup = model, groups, setup
        self.min_run_time, self.statistic, self.rounds = min_run_time, statistic, rounds
        self.dense = place_model(model, setup)
        self.inputs = place_inputs(inputs, setup)

    def __call__(self, kept: Mapping[str, int]) -> float:
        plan = PruningPlan(self.groups, {c: np.arange(k) for c, k in kept.items()
                                         if k < self.groups[c].channels}, {})
        try:
            placed = placed_shrunk(self.model, plan, self.setup)
            ratios = []
            for _ in range(self.rounds):
                dense = model_ms(self.dense, self.inputs, self.setup, self.min_run_time, self.statistic)
                ratios.append(model_ms(placed, self.inputs, self.setup, self.min_run_time, self.statistic) / dense)
        except Exception as exc:  # noqa: BLE001 - a model whose code fixes a size the table's plan changes
            raise ConfigError(f"cannot time the planned model ({type(exc).__name__}: {exc}); plan from the table "
                              "alone with --latency-refine 0", key="--latency-refine") from exc
        return float(statistics.median(ratios))


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
    step from the latest point when there is one point or the two slope the wrong way (noise;
    stepping from the latest, not the best, point keeps the loop from planning it again)."""
    below = [s for s in steps if s.measured < target]
    above = [s for s in steps if s.measured > target]
    lo = max(below, key=lambda s: s.measured) if below else None
    hi = min(above, key=lambda s: s.measured) if above else None
    a, b = steps[-2:] if len(steps) > 1 else (None, steps[-1])
    guess = None
    if a is not None and b.measured != a.measured:
        slope = (b.measured - a.measured) / (b.planned_for - a.planned_for) if b.planned_for != a.planned_for else 0
        if slope > 0:
            guess = b.planned_for + (target - b.measured) / slope
    if guess is None:  # the latest point alone: the model the loop stands at
        guess = b.planned_for * target / b.measured
    if lo is not None and hi is not None:
        low, high = sorted((lo.planned_for, hi.planned_for))
        if not low < guess < high:
            guess = (low + high) / 2
    return min(1.0, max(LOWEST, guess))


def refine_plan(plan_for: Callable[[float], LatencyPlan], measure: Callable[[Mapping[str, int]], float],
                target: float, tolerance: float = 0.05, max_steps: int = 4, budget_s: float = 300.0,
                clock: Callable[[], float] = time.monotonic) -> Refined:
    """Plan for ``target`` with the table, then correct the planning target on measured fractions."""
    started = clock()
    planned, steps, plans = target, [], []
    while True:
        try:
            plan = plan_for(planned)
        except ConfigError as exc:
            if not steps:
                raise
            log.info("latency loop: planning for %.3f failed (%s); keeping the closest measured plan",
                     planned, exc.message)
            break
        if any(p.kept == plan.kept for p in plans):
            log.info("latency loop: the table plans the same counts for %.3f as before; stopping", planned)
            break
        measured = measure(plan.kept)
        steps.append(Step(planned, plan.fraction, measured))
        plans.append(plan)
        log.info("latency loop step %d: planned for %.3f, table predicts %.3f, measured %.3f (target %.3f)",
                 len(steps) - 1, planned, plan.fraction, measured, target)
        if abs(measured / target - 1) <= tolerance:
            break
        if len(steps) > max_steps:
            log.info("latency loop: %d corrections spent, closest measured is kept", max_steps)
            break
        if clock() - started > budget_s:
            log.info("latency loop: the %.0f s budget is spent, closest measured is kept", budget_s)
            break
        planned = _next_target(steps, target)
    best = min(range(len(steps)), key=lambda i: abs(steps[i].measured - target))
    if abs(steps[best].measured / target - 1) > tolerance:
        log.warning("latency loop: closest measured plan is at %.3f of dense, outside %.0f%% of the target %.3f",
                    steps[best].measured, 100 * tolerance, target)
    return Refined(plans[best], steps[best].measured, steps[best].planned_for, steps)
