"""Checks shared by the tests: the grouping invariant that makes pruning exact."""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import pathlib
import os
import re
import subprocess
import sys
import types

import numpy as np
import torch
from torch import nn

from pruneconf import Pruner, find_groups, trace
from pruneconf.analysis import total_macs, total_params
from pruneconf.groups import ChannelGroups
from pruneconf.groups.context import CONSUMER
from pruneconf.groups.explain import coarse_steps
from pruneconf.masks.norms import attach_masked_norms, masked_norms
from pruneconf.masks.plan import PruningPlan
from pruneconf.masks.stats import attach_masked_statistics, masked_statistics
from pruneconf.trace.refs import iter_tensors
from zoo_pins import PINS

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> types.ModuleType:
    """``benchmarks/<name>.py`` as a module (registered in ``sys.modules``: its dataclasses
    look their module up there)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def torchrun_ranks(worker: str, out_dir: pathlib.Path) -> list[dict]:
    """Run ``tests/<worker>`` on two CPU ranks (gloo) under torchrun, each writing
    ``out_dir/rank<r>.pt``; returns what each rank wrote."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(pathlib.Path(__file__).with_name(worker)), str(out_dir)],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


def analyse(model: nn.Module, *inputs, **kw_inputs) -> ChannelGroups:
    example = kw_inputs if kw_inputs else (inputs[0] if len(inputs) == 1 else inputs)
    return find_groups(trace(model, example))


def _call(model, example):
    if isinstance(example, dict):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def _flat(out) -> list[torch.Tensor]:
    """The tensors of a model's output (a Hugging Face output also holds None and a cache)."""
    return list(iter_tensors(out))


def calibrated(model: nn.Module, example, norms_only: bool = False) -> nn.Module:
    """Eval-mode copy whose BatchNorm statistics come from ``example``.

    Randomly initialised deep nets with default running statistics overflow in eval mode;
    one train-mode pass with momentum 1 makes every activation well scaled. With
    ``norms_only`` only the norms run in train mode: a detector in train mode wants targets.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    for m in norms if norms_only else [model]:
        m.train()
    with torch.no_grad():
        _call(model, example)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def assert_no_influence(model: nn.Module, example, groups: ChannelGroups, fraction: float = 0.4,
                        seed: int = 0, atol: float = 1e-5, norms_only: bool = False) -> int:
    """Pick channels of every prunable group, cut them off at every consumer, then scramble
    their producers: the outputs must not move. A consumer the grouping missed would let
    the scrambled channels through. Norms with statistics across the picked channels
    (LayerNorm over channels, means and variances across them, noted ``channel_stats``) run masked, as under
    ``register_masks``, so they must leave the picked channels out too. Groups whose
    exactness rests on pruned channels being zero on both sides of a product (attention's
    q·k over pruned head dims, noted ``masked_contraction``) are left to masked ≡ applied.

    Returns the number of channels scrambled.
    """
    model = calibrated(copy.deepcopy(model), example, norms_only)
    gen = np.random.default_rng(seed)
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    picks = {}
    for g in groups.prunable:
        if "masked_contraction" in g.notes:
            continue
        k = max(1, int(g.channels * fraction))
        picks[g.center] = gen.choice(g.channels, size=min(k, g.channels - 1), replace=False)
    def members(role_is_consumer: bool):
        for g in groups.prunable:
            for m in g.members if g.center in picks else ():
                if (m.role == CONSUMER) == role_is_consumer:
                    idx = m.index[np.isin(m.channels, picks[g.center])]
                    if idx.size and params[m.param].is_floating_point():
                        yield m, params[m.param], torch.as_tensor(idx)

    kept = {c: np.setdiff1d(np.arange(groups[c].channels), drop) for c, drop in picks.items()}
    plan = PruningPlan(groups, kept, {})
    # a grouped conv pruned inside its groups reads each picked input in the other rows of its group
    grouped = [(params[name], torch.as_tensor(plan.members[(name, 1)])) for name in groups.grouped
               if (name, 1) in plan.members]

    def cut_consumers() -> None:
        for m, p, idx in members(True):
            p.index_fill_(m.dim, idx, 0.0)
        for p, keep in grouped:
            p.mul_(keep.reshape(*keep.shape, *[1] * (p.dim() - keep.dim())).to(p.dtype))
    handles = attach_masked_norms(model, masked_norms(plan)) + attach_masked_statistics(model, masked_statistics(plan))
    with torch.no_grad():
        cut_consumers()
        before = _flat(_call(model, example))
        for m, p, idx in members(False):
            noise = torch.rand_like(p.index_select(m.dim, idx)) + 0.5
            # relative to the tensor's own scale: a layer scale of 1e-5 scrambled by +3
            # would blow the activations up to inf, and inf times a cut-off zero is NaN
            scale = float(p.abs().mean()) or 1.0
            scrambled = p.index_select(m.dim, idx) * noise if m.param.endswith("running_var") \
                else p.index_select(m.dim, idx) + 3 * scale * noise
            p.index_copy_(m.dim, idx, scrambled)
        cut_consumers()  # a source row may span a consumer column of another group
        after = _flat(_call(model, example))
    for handle in handles:
        handle.remove()
    for a, b in zip(before, after):
        scale = max(1.0, float(a.abs().max()))
        assert torch.allclose(a, b, atol=atol * scale, rtol=0), \
            f"outputs moved by {float((a - b).abs().max()):.3g}: a coupling was missed"
    return sum(len(v) for v in picks.values())


@dataclasses.dataclass
class Pruned:
    """What :func:`prune_exactly` saw: the pruner and the outputs before, masked and applied."""

    pruner: Pruner
    reference: list[torch.Tensor]
    masked: list[torch.Tensor]
    applied: list[torch.Tensor]


def _outputs(model: nn.Module, example) -> list[torch.Tensor]:
    with torch.no_grad():
        return _flat(_call(model.eval(), example))


def prune_exactly(model: nn.Module, example, config: dict | None = None, atol: float | None = None,
                  calibration=None, norms_only: bool = False) -> Pruned:
    """The pruning invariants, on ``model`` in place: after calibrating its BatchNorm
    statistics, sparsity 0 gives it back bit for bit; then pruning by ``config`` (default
    sparsity 0.5; ``calibration`` batches for a data metric) gives an applied model whose
    outputs equal the masked model's within ``atol`` (default: 1e-5 of each output's scale,
    as ``apply_masks`` checks), with unchanged shapes."""
    model = calibrated(model, example, norms_only)
    reference = _outputs(model, example)
    untouched = copy.deepcopy(model)
    Pruner(untouched, example, {"sparsity": 0.0}).apply_masks()
    assert all(torch.equal(a, b) for a, b in zip(_outputs(untouched, example), reference))
    pruner = Pruner(model, example, config if config is not None else {"sparsity": 0.5}, calibration=calibration)
    pruner.register_masks()
    masked = _outputs(model, example)
    pruner.apply_masks()  # raises unless the shrunk model computes what the masked one did
    applied = _outputs(model, example)
    assert [t.shape for t in applied] == [t.shape for t in reference]
    for a, m in zip(applied, masked):
        tolerance = atol if atol is not None else 1e-5 * max(1.0, float(m.abs().max()))
        torch.testing.assert_close(a, m, atol=tolerance, rtol=0)
    return Pruned(pruner, reference, masked, applied)


def short_reason(reason: str) -> str:
    """A reason without the node it happened at, so equal causes compare (and count) equal."""
    reason = re.sub(r" at '[^']*'$", "", reason)
    reason = re.sub(r"produced by '[^']*' \(([^)]*)\)", r"produced by '\1'", reason)
    reason = re.sub(r" \(letter '.'\)", "", reason)
    reason = re.sub(r" \('[^']*'\)$", "", reason)  # "cannot resize X layers yet ('param')"
    reason = re.sub(r" \[[\d, ]*\]", "", reason)  # split sizes differ per block
    return reason


def left_whole(pruner: Pruner, lines: bool = False) -> dict[str, str]:
    """Every group that kept all its channels, with why: its ``reasons`` when it is not
    prunable, ``Pruner.skipped()`` when pruneconf cannot shrink it yet, ``Pruner.dropped``
    when the dry run saw shrinking it break the model's code, or too few channels. With
    ``lines``, each reason ends with the line of the model's code it happened at, when known."""
    kept = pruner.plan().kept
    skipped = pruner.skipped()
    graph = pruner.groups.graph
    why = {}
    for g in pruner.groups:
        if g.center in kept:
            continue
        if not g.prunable:
            why[g.center] = short_reason(g.reasons[0]) + (_model_line(g.reasons[0], graph) if lines else "")
        elif g.center in skipped:
            why[g.center] = short_reason(skipped[g.center]).split(":")[0]
        elif g.center in pruner.dropped:
            failed = re.search(r"fails to run at (\S+\.py:\d+)", pruner.dropped[g.center])
            why[g.center] = "shrinking it breaks the model's code" + (f" ({failed.group(1)})" if lines and failed else "")
        else:
            why[g.center] = "too few channels to drop one at this sparsity"
    return why


def _model_line(reason: str, graph) -> str:
    """`` (dir/file.py:line)``: the model line of the op a reason names (``at 'node'``), or ""."""
    node = re.search(r" at '([^']*)'", reason)
    where = graph.nodes[node.group(1)].get("where") if node and node.group(1) in graph else None
    return f" ({where})" if where else ""


def pruned_less(pruner: Pruner, sparsity: float, slack: float = 0.05) -> dict[str, str]:
    """Groups pruned, but keeping more than ``1 - sparsity`` of their channels by more than
    ``slack`` (whole heads, a share the dry run settled on): ``"keeps 2 of 3; 3 channels of
    64 columns: whole heads, split at ..."``, with the lines of the model's code that fix the step."""
    out = {}
    for center, idx in pruner.plan().kept.items():
        group = pruner.groups[center]
        if len(idx) / group.channels > 1 - sparsity + slack:
            steps = coarse_steps(group, pruner.groups.graph)
            out[center] = f"keeps {len(idx)} of {group.channels}" + (f"; {steps}" if steps else "")
    return out


def check_pruning(model: nn.Module, x, pin: str, groups: ChannelGroups | None = None,
                  norms_only: bool = False) -> Pruned:
    """The zoo check: something prunable, no missed coupling, :func:`prune_exactly` at 0.5,
    fewer MACs and parameters, and what ``zoo_pins.PINS[pin]`` says: the groups left whole,
    each with its reason, and the least fraction of MACs cut. A model that loses a pruned
    group fails. ``groups`` are found when not given; ``norms_only`` calibrates as
    :func:`calibrated` says. Returns what :func:`prune_exactly` saw."""
    groups = groups if groups is not None else find_groups(trace(model, x))
    assert groups.prunable, f"{type(model).__name__}: nothing prunable"
    assert assert_no_influence(model, x, groups, norms_only=norms_only) > 0
    before = trace(model, x)
    pruned = prune_exactly(model, x, norms_only=norms_only)
    after = trace(model, x)
    assert total_macs(after) < total_macs(before) and total_params(after) < total_params(before)
    assert_pinned(pin, 1 - total_macs(after) / total_macs(before), left_whole(pruned.pruner))
    return pruned


def assert_pinned(pin: str, cut: float, whole: dict[str, str]) -> None:
    """``cut`` and ``whole`` as ``zoo_pins.PINS[pin]`` has them; the message is the line to
    paste there when a change is intended."""
    line = f"{pin!r}: ({int(100 * cut) / 100}, {whole!r}),"
    assert pin in PINS, f"no pin for {pin}; measured:\n{line}"
    least, pinned = PINS[pin]
    assert whole == pinned, f"{pin}: groups left whole changed; measured:\n{line}"
    assert cut >= least, f"{pin}: MACs cut by {cut:.3f}, pinned at least {least}; measured:\n{line}"
