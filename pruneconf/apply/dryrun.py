"""Find the groups whose shrinking breaks the model, before any mask is set, and leave them whole.

Channel rules see shapes, not the Python that computed them. Model code that derives a
size from an attribute or from another tensor (``reshape(B, N, self.heads, C // heads)``)
can stop running, or compute something else, once a group shrinks. A dry run shrinks the
model itself, runs it and puts it back; no copy of the model is made.

Cost: a plan that shrinks cleanly costs one trial (one shrunk and one masked forward),
whatever the number of groups. Only a failed trial starts a search, and it is bounded: the
groups that stop the model from running are found first, with the shrunk forward alone
(which stops where it breaks); the trial's failure point bounds the search from above and
the last culprit's position from below (see :func:`drop_breaking_groups`).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .._walk import walk
from ..masks.plan import PruningPlan
from ..masks.transient import masked_forward
from ..trace.where import failing_line
from .shrink import Shrunk, shrink
from .verify import kept_outputs, model_outputs, outputs_problem, widened

log = logging.getLogger("pruneconf")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block, then every module's own mode back (a model may mix them).
    Only modes that differ are set: ``nn.Module.__setattr__`` is slow, and setting every
    module's mode twice cost a small model's prune a tenth of a forward."""
    modes = [(m, m.training) for _, m in walk(model).items]
    if any(training for _, training in modes):
        model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            if module.training != training:
                module.training = training


def _failing_module(model: nn.Module, exc: BaseException) -> str | None:
    """Path of the innermost module of ``model`` whose forward was running when ``exc`` rose."""
    paths = walk(model).path_of
    found, tb = None, exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in paths:
            found = paths[id(owner)]
        tb = tb.tb_next
    return found


class DryRun:
    """Shrinks the model, runs it and puts it back, bit for bit (:meth:`Shrunk.undo` restores
    the very tensors shrinking replaced); the masked outputs to compare with come from
    :func:`~pruneconf.masks.transient.masked_forward`, which leaves the weights alone. Use it
    through :func:`dry_run`, which sets eval mode and float32 for the comparison.

    :attr:`proven` names the groups of the last plan found exact (apply need not check that
    plan again on unchanged weights); :attr:`failed_at` the graph order where the last
    failing run stopped; :attr:`kept` what undoes the shrinking a ``keep`` run's first
    trial left in place.
    """

    def __init__(self, model: nn.Module, example: Any, atol: float, keep: bool = False) -> None:
        self.model, self.example, self.atol = model, example, atol
        self.proven: frozenset | None = None
        self.failed_at: int | None = None
        self.keep = keep  # the first trial only: see :attr:`kept`
        self.kept: Shrunk | None = None
        self._ends: dict[str, int] | None = None
        self._ran: tuple[frozenset, list[torch.Tensor]] | None = None  # the last shrunk run's outputs

    def _end_of(self, plan: PruningPlan, path: str) -> int | None:
        """The last graph order of an op run inside module ``path`` (its forward's end)."""
        if self._ends is None:
            self._ends = {}
            for _, attrs in plan.groups.graph.nodes(data=True):
                parts = attrs.get("module", "").split(".")
                for i in range(len(parts) + 1):
                    key = ".".join(parts[:i])
                    self._ends[key] = max(self._ends.get(key, -1), attrs.get("order", -1))
        return self._ends.get(path)

    def _shrunk_outputs(self, plan: PruningPlan, keep: bool = False) -> tuple[list[torch.Tensor] | None, str | None]:
        """The shrunk model's outputs, or why it does not run; the model is put back unless
        ``keep`` and it ran (then :attr:`kept` holds what undoes it)."""
        self.failed_at = None
        key = frozenset(plan.kept)
        if self._ran is not None and self._ran[0] == key:  # ``breaks`` then ``problem`` of one plan
            return self._ran[1], None
        done = shrink(self.model, plan, log_changes=False)
        try:
            self._ran = (key, model_outputs(self.model, self.example))
        except Exception as exc:  # noqa: BLE001 - a shrunk model that does not run is the finding
            done.undo()
            path = _failing_module(self.model, exc)
            self.failed_at = None if path is None else self._end_of(plan, path)
            where = failing_line(exc)
            return None, f"fails to run{f' at {where}' if where else ''}: {type(exc).__name__}: {exc}"
        if keep:
            self.kept = done
        else:
            done.undo()
        return self._ran[1], None

    def breaks(self, plan: PruningPlan) -> str | None:
        """Why the model shrunk by ``plan`` does not run, or None (its outputs are not checked)."""
        return self._shrunk_outputs(plan)[1]

    def problem(self, plan: PruningPlan) -> str | None:
        """Why shrinking by ``plan`` would not reproduce the masked model, or None.

        The masked outputs come first, from the model as it is; then the shrunk run. On the
        first trial of a run made with ``keep``, an exact shrunk model stays shrunk (one
        shrink, no masks: :meth:`~pruneconf.pruner.Pruner.prune`); any other trial, or a
        failed one, puts the model back."""
        keep, self.keep = self.keep, False
        ran = self._ran is not None and self._ran[0] == frozenset(plan.kept)  # by ``breaks``: it runs
        expected = None if ran else self._masked_outputs(plan)
        got, problem = self._shrunk_outputs(plan, keep)
        if problem is not None:
            return problem
        expected = self._masked_outputs(plan) if expected is None else expected
        problem = outputs_problem(kept_outputs(expected, plan), got, self.atol)
        if problem is None:
            self.proven = frozenset(plan.kept)
        elif self.kept is not None:
            self.kept.undo()
            self.kept = None
        return problem

    def _masked_outputs(self, plan: PruningPlan) -> list[torch.Tensor]:
        with masked_forward(self.model, plan):
            return model_outputs(self.model, self.example)


@contextlib.contextmanager
def dry_run(model: nn.Module, example: Any, atol: float = 1e-5, keep: bool = False) -> Iterator[DryRun]:
    """A :class:`DryRun` of ``model`` in eval mode, half precision widened (see :func:`widened`);
    with ``keep``, a first trial found exact leaves the model shrunk (:attr:`DryRun.kept`)."""
    with widened(model, example) as widened_example, evaluating(model):
        yield DryRun(model, widened_example, atol, keep)


def _first_failing_prefix(fails: Callable[[int], bool], lo: int, hi: int) -> int:
    """Smallest ``k`` in ``(lo, hi]`` with ``fails(k)``, knowing ``fails(hi)`` and not
    ``fails(lo)``. It gallops down from ``hi`` first (a culprit most often sits just before
    where the model broke), then bisects the gap it found."""
    step = 1
    while hi - step > lo:
        if not fails(hi - step):
            lo = hi - step
            break
        hi, step = hi - step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fails(mid):
            hi = mid
        else:
            lo = mid
    return hi


class _Search:
    """Greedy culprit search for one test (``breaks`` or ``problem``), memoised per prefix."""

    def __init__(self, run: Any, plan: PruningPlan, test: Callable[[PruningPlan], str | None]) -> None:
        self.run, self.plan, self.test = run, plan, test
        self.problems: dict[tuple[str, ...], tuple[str | None, int | None]] = {}
        self.order = {g.center: g.order for g in plan.groups}

    def problem(self, subset: list[str]) -> tuple[str | None, int | None]:
        key = tuple(subset)
        if key not in self.problems:
            found = self.test(self.plan.restricted(subset))
            self.problems[key] = (found, getattr(self.run, "failed_at", None))
        return self.problems[key]

    def drop(self, centers: list[str], dropped: dict[str, str]) -> list[str]:
        """``centers`` without each group that makes its prefix fail, noted in ``dropped``."""
        passing = 0  # centers[:passing] is known to pass
        while centers and self.problem(centers)[0] is not None:
            hi = self._bound(centers, passing)
            k = _first_failing_prefix(lambda n: self.problem(centers[:n])[0] is not None, passing, hi)
            culprit = centers.pop(k - 1)
            passing = k - 1
            dropped[culprit] = (f"shrinking it breaks the model (the shrunk model "
                                f"{self.problem(centers[:k - 1] + [culprit])[0]}); the model's code "
                                f"likely fixes a size this group would change")
            log.warning("group %s left whole: %s", culprit, dropped[culprit])
        return centers

    def _bound(self, centers: list[str], passing: int) -> int:
        """A failing prefix as short as the failure point allows: the groups centred before
        the op where the whole prefix stopped running (tested, so only a hint)."""
        failed_at = self.problem(centers)[1]
        if failed_at is None:
            return len(centers)
        before = [i for i, c in enumerate(centers) if self.order[c] < failed_at]
        hint = before[-1] + 1 if before else 0
        if passing < hint < len(centers) and self.problem(centers[:hint])[0] is not None:
            return hint
        return len(centers)


def drop_breaking_groups(model: nn.Module, example: Any, plan: PruningPlan, atol: float = 1e-5,
                         run: Any = None) -> tuple[PruningPlan, dict[str, str]]:
    """``plan`` without the groups whose shrinking breaks the model, and why each was dropped.

    One trial of the whole plan; only if it fails are groups added in graph order, the first
    prefix that fails naming one culprit, which is dropped; the prefix before it is known to
    pass, so the next search starts there. Groups that stop the model from running are found
    first with the shrunk run alone (``run.breaks``, when the run has it), then groups whose
    shrunk model computes something else, with the full comparison. ``run`` is anything with
    ``problem(plan) -> str | None``; a :class:`DryRun` of ``model`` itself by default.
    """
    if not plan.kept:
        return plan, {}
    if run is None:
        with dry_run(model, example, atol) as run:
            return drop_breaking_groups(model, example, plan, atol, run)
    problem = run.problem(plan)
    if problem is None:
        return plan, {}
    centers = [g.center for g in plan.groups if g.center in plan.kept]
    log.info("dry run: the shrunk model %s; looking for the groups responsible among %d", problem, len(centers))
    dropped: dict[str, str] = {}
    tests = [getattr(run, "breaks", None), run.problem]
    for test in filter(None, tests):
        centers = _Search(run, plan, test).drop(centers, dropped)
    return plan.restricted(centers), dropped


def retry_together(plan: PruningPlan, full: PruningPlan, dropped: dict[str, str], run: Any,
                   keep_best: Callable[[str, int], np.ndarray]) -> tuple[PruningPlan, dict[str, str]]:
    """``plan`` (``full`` less the ``dropped`` groups) with those groups tried once more, all
    together, each keeping one share of its channels: the share the group with the fewest
    channels kept in ``full``. Model code that ties sizes by a ratio breaks when the groups
    shrink apart: Swin's ``qkv.reshape(..., 3, num_heads, C // num_heads)`` reads ``C`` from
    its residual stream, so a stream of 96 channels that keeps 48 next to 3 heads of 32 that
    keep 2 fails, while keeping 64 and 2 (two thirds each) runs. ``keep_best(center, n)`` gives
    the ``n`` best channels of a group. One more trial, with the full comparison, only when
    two or more groups were dropped; the groups stay dropped unless it is exact."""
    groups = [full.groups[c] for c in dropped if c in full.kept]
    if len(groups) < 2 or any(g.blocks is not None or g.pinned.size for g in groups):
        return plan, dropped
    coarsest = min(groups, key=lambda g: g.channels)
    share = len(full.kept[coarsest.center]) / coarsest.channels
    kept = {g.center: keep_best(g.center, max(1, round(g.channels * share))) for g in groups}
    trial = PruningPlan(full.groups, {**plan.kept, **kept}, plan.requested, plan.experts)
    problem = run.problem(trial)
    if problem is not None:
        log.info("dry run: the dropped groups kept at %.2f together: the shrunk model %s", share, problem)
        return plan, dropped
    log.warning("groups %s pruned after all: together, each keeping %.2f of its channels", ", ".join(kept), share)
    return trial, {c: why for c, why in dropped.items() if c not in kept}


__all__ = ["DryRun", "drop_breaking_groups", "dry_run", "evaluating", "retry_together"]
