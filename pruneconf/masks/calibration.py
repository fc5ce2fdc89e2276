"""Calibration: per-channel statistics of a model over example batches, for data metrics.

Every statistic is a fixed-size running sum per channel position, updated batch by batch;
no activation outlives its batch, so memory does not grow with the number of batches.

``activation`` (one forward per batch, under ``no_grad``): the mean |x| of every channel
position of each tensor that a group's *consumers* read — the input of the next conv or
linear layer. That is where a channel's value is used: for a conv-BN-ReLU group the
post-ReLU feature map, for an LLM's MLP the intermediate entering ``down_proj``, for its
heads the attention output entering ``o_proj``, for its hidden size each norm's output
entering q/k/v, gate/up and the head (the tensors Minitron ranks by). A channel's score is
the sum of its means over every such tensor; a tensor read by several consumers (q, k, v)
counts once. Tensors are matched to the traced graph by the consumer parameter an op reads
(:class:`_ConsumerInputs`), so raw parameters of custom modules are seen like layers.

``taylor`` (a forward and a backward per batch): after each batch's backward of ``loss``,
``|Σ w·∂L/∂w|`` over every member slice of a channel (source rows, followers, consumer
columns) — the first-order change of the loss when the whole channel is removed — summed
over batches. Gradients are the only parameter-sized state, as in one training step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .._progress import progress
from ..errors import PruneconfError
from ..groups import ChannelGroups, Group
from ..groups.context import CONSUMER
from ..trace.refs import iter_refs, iter_tensors
from ..trace.tracer import _call

log = logging.getLogger(__name__)

Loss = Callable[[Any, Any], torch.Tensor]  # loss(model outputs, batch) -> scalar
STATISTICS = ("activation", "taylor")


def squared_outputs(outputs: Any, batch: Any) -> torch.Tensor:
    """The default ``taylor`` loss: the mean square of every floating-point output, summed.
    Its gradient says how much each weight moves the outputs, with no labels needed."""
    terms = [t.float().pow(2).mean() for t in iter_tensors(outputs) if t.is_floating_point()]
    if not terms:
        raise PruneconfError("the model returned no floating-point tensor to differentiate; pass a loss")
    return torch.stack(terms).sum()


@dataclasses.dataclass
class Calibration:
    """Per-channel scores of every prunable group, per statistic, over ``batches`` batches."""

    batches: int
    scores: dict[str, dict[str, np.ndarray]]  # statistic -> group center -> per-channel score

    def score(self, statistic: str, group: Group) -> np.ndarray | None:
        """The group's per-channel scores, or None where the statistic saw none of its channels."""
        table = self.scores.get(statistic)
        if table is None:
            raise PruneconfError(f"calibration did not collect '{statistic}'; calibrate for this metric")
        found = table.get(group.center)
        return None if found is None else found.copy()


class _ConsumerInputs(TorchFunctionMode):
    """Running |x| sums of the tensors that consumers of prunable groups read.

    The traced graph knows, for every op that takes a consumer parameter (``q_proj.weight``),
    which of its arguments are activations and which group channel each of their positions
    carries. At run time the k-th call taking that parameter is the k-th such op of the
    graph (the tracer records calls the same way), and its arguments line up with the
    recorded ones.
    """

    def __init__(self, groups: ChannelGroups, tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.groups = groups
        graph = groups.graph
        prunable = {i for i, g in enumerate(groups.groups) if g.prunable}
        consumers = {m.param for g in groups.prunable for m in g.members if m.role == CONSUMER}
        self.uses: dict[int, tuple[str, list[tuple[int, list[tuple[int, tuple[str, int], int]]]]]] = {}
        for node, attrs in graph.nodes(data=True):
            if attrs["kind"] != "param" or attrs["target"] not in consumers or attrs["target"] not in tensors:
                continue
            calls = []
            for op in sorted(graph.successors(node), key=lambda n: graph.nodes[n]["order"]):
                leaves = list(iter_refs((graph.nodes[op]["args"], graph.nodes[op]["kwargs"])))
                watched = [(i, (ref.node, ref.index), dim) for i, ref in enumerate(leaves)
                           if graph.nodes[ref.node]["kind"] == "call"
                           for dim, (gi, _) in groups.channel_map(ref.node, ref.index).items()
                           if np.isin(gi, list(prunable)).any()]
                calls.append((len(leaves), watched))
            self.uses[id(tensors[attrs["target"]])] = (attrs["target"], calls)
        self.sums: dict[tuple[str, int, int], torch.Tensor] = {}
        self.counts: dict[tuple[str, int, int], int] = {}
        self.skipped: set[str] = set()
        self._calls: dict[str, int] = {}
        self._seen: set[tuple[str, int]] = set()

    def new_batch(self) -> None:
        self._calls.clear()
        self._seen.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) and next(iter_tensors(out), None) is None:
            return out  # shape queries: the tracer records no node for them either
        leaves = list(iter_tensors((args, kwargs)))
        use = next((self.uses[id(t)] for t in leaves if id(t) in self.uses), None)
        if use is not None:
            self._observe(*use, leaves)
        return out

    def _observe(self, name: str, calls: list, leaves: list[torch.Tensor]) -> None:
        k = self._calls[name] = self._calls.get(name, -1) + 1
        if k >= len(calls) or calls[k][0] != len(leaves):
            self.skipped.add(f"a call of {name} the trace did not record")
            return
        fresh = [(position, key, dim) for position, key, dim in calls[k][1] if key not in self._seen]
        for position, key, dim in fresh:
            self._add(key, dim, leaves[position].detach())
        self._seen.update(key for _, key, _ in fresh)

    def _add(self, key: tuple[str, int], dim: int, x: torch.Tensor) -> None:
        width = len(self.groups.channel_map(*key)[dim][0])
        if x.dim() <= dim or x.shape[dim] != width:
            self.skipped.add(f"'{key[0]}' has {tuple(x.shape)} positions, {width} traced along dim {dim}")
            return
        rows = x.abs().float().movedim(dim, -1).reshape(-1, width)
        total = rows.sum(0, dtype=torch.float64)
        slot = (*key, dim)
        if slot in self.sums:
            self.sums[slot] += total
        else:
            self.sums[slot] = total
        self.counts[slot] = self.counts.get(slot, 0) + rows.shape[0]

    def nbytes(self) -> int:
        """Size of the accumulated state: constant once every watched tensor has been seen."""
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    def scores(self) -> dict[str, np.ndarray]:
        """Per prunable group whose channels were seen: each channel's mean |x|, summed over tensors."""
        out = {g.center: np.zeros(g.channels) for g in self.groups.prunable}
        seen = set()
        for (node, index, dim), total in self.sums.items():
            group_index, channel = self.groups.channel_map(node, index)[dim]
            mean = total.numpy() / self.counts[(node, index, dim)]
            for gi in np.unique(group_index[group_index >= 0]).tolist():
                g = self.groups.groups[gi]
                if g.center in out:
                    at = group_index == gi
                    np.add.at(out[g.center], channel[at], mean[at])
                    seen.add(g.center)
        return {center: score for center, score in out.items() if center in seen}


class _TaylorSums:
    """Per group and channel, ``Σ_batches |Σ_members w·∂L/∂w|`` (a running sum)."""

    def __init__(self, groups: ChannelGroups, tensors: Mapping[str, torch.Tensor]) -> None:
        self.groups = groups.prunable
        self.tensors = tensors
        self.totals = {g.center: np.zeros(g.channels) for g in self.groups}

    def params(self) -> set[str]:
        return {m.param for g in self.groups for m in g.members
                if m.param in self.tensors and self.tensors[m.param].is_floating_point()}

    def update(self) -> None:
        rows: dict[tuple[str, int], np.ndarray] = {}
        for g in self.groups:
            batch = np.zeros(g.channels)
            for m in g.members:
                t = self.tensors.get(m.param)
                if t is None or t.grad is None:
                    continue
                if (m.param, m.dim) not in rows:
                    product = (t.detach().float() * t.grad.float()).movedim(m.dim, 0)
                    rows[m.param, m.dim] = product.reshape(t.shape[m.dim], -1).sum(1, dtype=torch.float64).numpy()
                np.add.at(batch, m.channels, rows[m.param, m.dim][m.index])
            self.totals[g.center] += np.abs(batch)

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.totals.values())


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    return tensors


@contextlib.contextmanager
def _calibrating(model: nn.Module, grad_params: Collection[str]) -> Iterator[None]:
    """Eval mode; gradients only for ``grad_params``. Mode, buffers, ``requires_grad`` flags
    and any gradients the user had are put back afterwards."""
    training = model.training
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    named = dict(model.named_parameters(remove_duplicate=False))
    params = list({id(p): p for p in named.values()}.values())
    wanted = {id(named[n]) for n in grad_params if n in named}
    saved = [(p, p.requires_grad, p.grad) for p in params]
    model.eval()
    try:
        for p in params:
            p.grad = None
            p.requires_grad_(id(p) in wanted)
        yield
    finally:
        model.train(training)
        with torch.no_grad():
            for b, value in buffers:
                b.copy_(value)
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad


class Calibrator:
    """Accumulates the requested statistics one batch at a time (:meth:`update`), then
    :meth:`result`. The state is a fixed set of per-channel sums (:meth:`nbytes`)."""

    def __init__(self, model: nn.Module, groups: ChannelGroups, statistics: Collection[str] = STATISTICS,
                 loss: Loss | None = None) -> None:
        unknown = sorted(set(statistics) - set(STATISTICS))
        if unknown:
            raise PruneconfError(f"unknown calibration statistic {unknown[0]!r}; expected one of {STATISTICS}")
        tensors = _tensors(model)
        self.model, self.groups, self.loss = model, groups, loss or squared_outputs
        self.activation = _ConsumerInputs(groups, tensors) if "activation" in statistics else None
        self.taylor = _TaylorSums(groups, tensors) if "taylor" in statistics else None
        self.batches = 0

    def update(self, batch: Any) -> None:
        """One forward (and backward for ``taylor``) on ``batch``; call inside :meth:`session`."""
        self.batches += 1
        recording = self.activation if self.activation is not None else contextlib.nullcontext()
        if self.activation is not None:
            self.activation.new_batch()
        try:
            with torch.set_grad_enabled(self.taylor is not None), recording:
                outputs = _call(self.model, batch)
            if self.taylor is not None:
                self.loss(outputs, batch).backward()
        except Exception as exc:
            raise PruneconfError(f"calibration batch {self.batches} failed: {type(exc).__name__}: {exc}") from exc
        if self.taylor is not None:
            self.taylor.update()
            for p in self.model.parameters():
                p.grad = None

    def session(self) -> contextlib.AbstractContextManager:
        """The model in eval mode, gradients where ``taylor`` needs them; all restored on exit."""
        return _calibrating(self.model, self.taylor.params() if self.taylor is not None else ())

    def nbytes(self) -> int:
        """Bytes of accumulated statistics: they do not grow with the number of batches."""
        return sum(s.nbytes() for s in (self.activation, self.taylor) if s is not None)

    def result(self) -> Calibration:
        if self.batches == 0:
            raise PruneconfError("the calibration data yielded no batches")
        scores = {}
        if self.activation is not None:
            scores["activation"] = self.activation.scores()
            for why in sorted(self.activation.skipped):
                log.warning("calibration: not measured: %s", why)
            unseen = [g.center for g in self.groups.prunable if g.center not in scores["activation"]]
            if unseen:
                log.warning("calibration: no layer reads the channels of %s as an input; the activation "
                            "metric ranks them by l2_norm", ", ".join(unseen))
        if self.taylor is not None:
            scores["taylor"] = self.taylor.totals
        return Calibration(self.batches, scores)


def calibrate(model: nn.Module, groups: ChannelGroups, batches: Iterable[Any],
              statistics: Collection[str] = STATISTICS, loss: Loss | None = None) -> Calibration:
    """Run ``model`` on every batch (each in the form of the example inputs: a tensor, a
    tuple of positional arguments or a dict of keyword arguments) and gather ``statistics``.
    ``loss(outputs, batch)`` drives ``taylor`` (default :func:`squared_outputs`). The model
    is left as it was; the same batches and weights give the same statistics."""
    calibrator = Calibrator(model, groups, statistics, loss)
    with calibrator.session():
        for batch in progress(batches, "calibrating"):
            calibrator.update(batch)
    result = calibrator.result()
    log.info("calibrated %s on %d batches", " and ".join(result.scores), result.batches)
    return result
