"""The pruning workflow on one model: recipe in, masks for finetuning, then a smaller model.

    pruner = Pruner(model, example_inputs, "recipe.yaml")
    pruner.register_masks()          # finetune: pruned channels stay exactly zero
    ...
    pruner.apply_masks()             # shrink the layers; checked against the masked model

Under FSDP2, plan before ``fully_shard`` and apply on an unsharded twin (:meth:`Pruner.gather`).

``OneShotChannelPruner`` keeps the API of TinyNeuralNetwork's pruning tutorial.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
from torch import nn

from ._walk import walked_once
from .analysis import total_macs, total_params, tutorial_flops
from .apply import shrink, unsupported_groups
from .apply.shrink import Shrunk
from .apply.dryrun import drop_breaking_groups, dry_run, evaluating, retry_together
from .apply.verify import compare_shrunk, model_outputs, widened
from .distributed import broadcast_model, copy_full_state, distributed, sharded
from .errors import PruneconfError
from .groups import ChannelGroups, find_groups
from .masks import Calibration, Masks, PruningPlan, calibration_for, make_plan, register_masks
from .masks.plan import model_tensors, top_channels
from .masks.calibration import Loss
from .recipe.load import CONV_GROUPS, Recipe, Settings, check_against, load_recipe
from .trace import trace

log = logging.getLogger("pruneconf")


def fingerprint(model: nn.Module) -> tuple:
    """Identity, storage and version counter of every parameter and buffer: any in-place
    change (an optimizer step, a training forward's running statistics, a reload) alters it."""
    return tuple((id(t), t.data_ptr(), t._version) for t in model_tensors(model).values())


class VerificationError(PruneconfError):
    """The shrunk model did not compute what the masked model computed; it was rolled back."""


def _as_recipe(config: Any) -> Recipe:
    """A recipe from a path, a :class:`Recipe`, or the tutorial's dict (``sparsity``, ``metrics``,
    ``round_to``, ``groups``, ``conv_groups``)."""
    if isinstance(config, Recipe):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_recipe(config)
    config = dict(config or {})
    settings = Settings(default_sparsity=float(config.pop("sparsity", 0.5)),
                        metric=config.pop("metrics", config.pop("metric", "l2_norm")),
                        round_to=int(config.pop("round_to", 1)))
    settings.conv_groups = str(config.pop("conv_groups", "inside"))
    sparsity = {str(k): float(v) for k, v in config.pop("groups", {}).items()}
    if config:
        raise PruneconfError(f"unknown config keys: {', '.join(map(str, config))}")
    if settings.conv_groups not in CONV_GROUPS:
        raise PruneconfError(f"conv_groups: expected one of {', '.join(CONV_GROUPS)}, got {settings.conv_groups!r}")
    return Recipe(path="<config>", settings=settings, sparsity=sparsity)


def _refuse_sharded(model: nn.Module) -> None:
    """Tracing and ranking read whole tensors: on FSDP2 shards they would see a part or nothing."""
    if sharded(model):
        raise PruneconfError("the model is sharded (FSDP2): create the Pruner and make its plan "
                             "(pruner.plan()) before fully_shard, on the whole model")


Method = TypeVar("Method", bound=Callable[..., Any])


def _walking_once(method: Method) -> Method:
    """Run a :class:`Pruner` step with one walk of the model's modules (see :mod:`._walk`)."""
    @functools.wraps(method)
    def step(self: "Pruner", *args: Any, **kwargs: Any) -> Any:
        with walked_once(self.model):
            return method(self, *args, **kwargs)
    return step  # type: ignore[return-value]


class Pruner:
    """Trace ``model`` once, read the recipe, and prune it in place.

    ``calibration`` (an iterable of batches in the form of ``example_inputs``, or a
    :class:`~pruneconf.masks.Calibration` gathered before) feeds data metrics such as
    ``activation`` and ``taylor``; ``loss(outputs, batch)`` drives ``taylor``. It is
    consumed once, when the plan is made, and only if the recipe's metric reads data.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, config: Any = None, calibration: Any = None,
                 loss: Loss | None = None) -> None:
        self.model = model
        self.example_inputs = example_inputs
        with walked_once(model):
            _refuse_sharded(model)
            self.recipe = _as_recipe(config)
            self.graph = trace(model, example_inputs)
        self.groups: ChannelGroups = find_groups(self.graph)
        check_against(self.recipe, self.groups)
        self.masks: Masks | None = None
        self.applied: PruningPlan | None = None
        self._plan: PruningPlan | None = None
        self.dropped: dict[str, str] = {}
        self._skipped: dict[str, str] | None = None
        self._proof: tuple | None = None  # the fingerprint the dry run's proof holds for, see _proven
        self.calibration: Calibration | None = None
        self._batches = calibration
        self.loss = loss

    def skipped(self) -> dict[str, str]:
        """Prunable groups with layers pruneconf cannot resize, with the reason (computed once)."""
        if self._skipped is None:
            self._skipped = unsupported_groups(self.model, self.groups)
        return self._skipped

    def calibrate(self, batches: Iterable[Any] | Calibration, loss: Loss | None = None) -> Calibration | None:
        """Gather what the recipe's metric ranks by from ``batches``: N forwards (plus N
        backwards of ``loss`` for ``taylor``), streaming per-channel sums only. Returns None
        for a weight metric, which needs no data. Call it before the plan is made."""
        if self._plan is not None:
            raise PruneconfError("calibrate before the plan is made (plan(), register_masks(), apply_masks())")
        self._batches = None
        self.calibration = calibration_for(self.model, self.groups, self.recipe.settings.metric, batches,
                                           loss or self.loss)
        return self.calibration

    def _best_channels(self, center: str, keep: int) -> np.ndarray:
        """The ``keep`` best channels of group ``center`` by the recipe's metric."""
        return top_channels(self.groups[center], self.channel_scores([center])[center], keep,
                            self.recipe.drops_conv_groups(self.groups[center]))

    def channel_scores(self, centers: Iterable[str]) -> dict[str, np.ndarray]:
        """Each listed group's channel importance by the recipe's metric, for planners that weigh
        importance against cost (a latency plan); calibrates first if batches were given."""
        from .masks.importance import METRICS
        from .masks.plan import rank_inputs

        if self._batches is not None:
            self.calibrate(self._batches)
        inputs = rank_inputs(self.model, self.recipe, self.calibration)
        score = METRICS[self.recipe.settings.metric]
        return {c: score(self.groups[c], inputs) for c in centers}

    @_walking_once
    def plan(self) -> PruningPlan:
        """Which channels each group keeps. Groups whose shrinking a dry run (the model shrunk,
        run and put back) shows to break it are left whole (see :attr:`dropped`), before any
        mask exists."""
        if self._plan is None:
            self._make_plan(keep_shrunk=False)
        return self._plan

    def _make_plan(self, keep_shrunk: bool) -> Shrunk | None:
        """Rank, then dry-run the plan. With ``keep_shrunk``, a plan whose first trial is exact
        leaves the model shrunk and its :class:`Shrunk` is returned (:meth:`prune` needs
        nothing more); otherwise the model is as before and the proof is noted for apply."""
        _refuse_sharded(self.model)
        if self._batches is not None:
            self.calibrate(self._batches)
        plan = make_plan(self.model, self.groups, self.recipe, skip=self.skipped(), calibration=self.calibration)
        with dry_run(self.model, self.example_inputs, keep=keep_shrunk) as run:
            self._plan, self.dropped = drop_breaking_groups(self.model, self.example_inputs, plan, run=run)
            self._plan, self.dropped = retry_together(self._plan, plan, self.dropped, run, self._best_channels)
        if run.kept is not None:
            return run.kept
        if run.proven == frozenset(self._plan.kept):
            self._proof = fingerprint(self.model)
        return None

    @_walking_once
    def register_masks(self) -> Masks:
        """Zero the pruned channels and keep them at zero through training."""
        if self.masks is None:
            plan = self.plan()
            proven = self._proven()
            self.masks = register_masks(self.model, plan)
            self._proof = fingerprint(self.model) if proven else None
        return self.masks

    def gather(self, model: nn.Module) -> nn.Module:
        """Move this pruner from the FSDP2-sharded model it masks to ``model``, an unsharded
        one built the same way, on the example inputs' device: the full weights are gathered into it, the
        masks leave the sharded model and hold on ``model``, and :meth:`apply_masks` then
        shrinks ``model``. A collective: call it on every rank. Returns ``model``."""
        plan = self.plan()
        copy_full_state(self.model, model)
        if self.masks is not None:
            self.masks.remove()
        self.model = model
        self.masks = register_masks(model, plan)
        self._proof = None  # the dry run shrank the sharded model's twin, not this one
        return model

    def _proven(self) -> bool:
        """Whether the dry run's proof still holds: it shrank this very model by this plan and
        found it computing what the masked model computes, and no parameter or buffer has
        changed since (masks aside). Shrinking is deterministic, so apply would only repeat
        it. Any training step, forward or reload voids the proof, and apply checks in full."""
        if self._proof is not None and self._proof == fingerprint(self.model):
            return True
        self._proof = None
        return False

    @_walking_once
    def apply_masks(self, verify: bool = True, atol: float = 1e-5) -> PruningPlan:
        """Shrink every pruned layer; remove masks and hooks.

        With ``verify`` the shrunk model must reproduce the masked model's outputs on the
        example inputs in eval mode (max error ≤ ``atol`` × output scale); otherwise the
        model is restored as it was before this call and :class:`VerificationError` raised.
        When nothing changed the model since the dry run proved this (no finetuning between
        the masks and apply), that proof stands and the check is not run again.
        Half-precision models are compared in float32 (:func:`~pruneconf.apply.verify.widened`). Under ``torch.distributed`` rank 0's parameters and buffers are broadcast first, so
        every rank ends with the same shrunk model (call it on ``ddp_model.module``).
        """
        if sharded(self.model):
            raise PruneconfError("an FSDP2-sharded model cannot be shrunk in place: call "
                                 "pruner.gather(unsharded_model) on every rank first")
        plan = self.plan()
        masks = self.register_masks()
        broadcast_model(self.model)
        proven = self._proven()
        self._proof = None
        with evaluating(self.model):
            if verify and not proven:
                with widened(self.model, self.example_inputs) as example:  # half precision: checked in fp32
                    problem = self._shrink_checked(plan, masks, example, atol)
            else:
                masks.remove()
                shrink(self.model, plan)
                problem = None
        if problem is not None:
            self.masks = register_masks(self.model, plan)
            raise VerificationError(f"the shrunk model {problem}; the model was restored with its masks")
        self.masks = None
        self.applied = plan
        return plan

    def _shrink_checked(self, plan: PruningPlan, masks: Masks, example: Any, atol: float) -> str | None:
        """Shrink, compare with the masked model, and undo the shrinking if they differ.
        Shrinking never writes into the tensors it replaces, so undoing it restores the
        masked model bit for bit."""
        expected = model_outputs(self.model, example)
        masks.remove()
        done, problem = compare_shrunk(self.model, example, plan, expected, atol)
        if problem is not None:
            done.undo()
        return problem

    def write_applied(self, recipe: str | os.PathLike | Any, output: str | os.PathLike) -> None:
        """Write the recipe (a path or a loaded document) plus an ``applied`` section to ``output``."""
        from .recipe import load_document, write_atomic
        from .masks.applied import applied_section
        from .recipe.applied import record_calibration
        from .recipe.yamlio import dump_document

        if self.applied is None:
            raise PruneconfError("nothing applied yet: call apply_masks() first")
        doc = load_document(recipe) if isinstance(recipe, (str, os.PathLike)) else recipe
        if self.calibration is not None:
            record_calibration(doc, self.calibration.batches)
        doc["applied"] = applied_section(self.applied)
        write_atomic(output, dump_document(doc))

    @_walking_once
    def prune(self) -> nn.Module:
        """Masks then apply in one go: the pruned model, shrunk in place. Before any plan or
        mask, outside distributed runs, the dry run's own shrunk model is kept when it is
        exact: one shrink, no masks, the same check."""
        if self._plan is None and self.masks is None and not distributed():
            shrunk = self._make_plan(keep_shrunk=True)
            if shrunk is not None:
                shrunk.log()
                self.applied = self._plan
                return self.model
        self.apply_masks()
        return self.model

    def report(self) -> dict[str, int]:
        """MACs, parameters and tutorial FLOPs of the model as it is now: read off the trace
        made at construction until the model is shrunk, measured by a new trace after."""
        graph = self.graph if self.applied is None else trace(self.model, self.example_inputs)
        return {"macs": total_macs(graph), "params": total_params(graph), "flops": tutorial_flops(graph)}


class OneShotChannelPruner(Pruner):
    """The tutorial API: ``OneShotChannelPruner(model, dummy_input, config)``.

    ``config`` is a dict (``{'sparsity': 0.25, 'metrics': 'l2_norm'}``) or a recipe path.
    """

    def calc_flops(self) -> int:
        """FLOPs of the model as it is now, in the tutorial's convention (see README)."""
        graph = trace(self.model, self.example_inputs)
        flops = tutorial_flops(graph)
        log.info("FLOPs: %s, MACs: %s, params: %s", f"{flops:,}", f"{total_macs(graph):,}",
                 f"{total_params(graph):,}")
        return flops

    def generate_config(self, path: str | os.PathLike) -> None:
        """Write the model's recipe (with this pruner's settings) to ``path``."""
        from .recipe import write_atomic, write_recipe

        s = self.recipe.settings
        text = write_recipe(path, self.groups, settings={"default_sparsity": s.default_sparsity,
                                                         "metric": s.metric, "round_to": s.round_to})
        write_atomic(path, text)


__all__ = ["OneShotChannelPruner", "Pruner", "VerificationError"]
