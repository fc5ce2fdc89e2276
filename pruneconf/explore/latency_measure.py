"""``pruneconf latency``: time, on this machine, how each group's layers speed up as it shrinks.

A *unit* is one call of a leaf module that takes one tensor: a conv, a linear, a norm, an
activation, a pooling or permute layer. The trace renames a leaf call's output node to the
module's path (``layer1.0.relu#1`` for a second call), so each unit is found in the graph with
the tensor it reads; the group channel maps of that tensor and of its output say which groups
touch it — norms, activations and pooling included, which cost time but count no MACs.

For each group and a few kept counts (see :func:`probe_counts`) the units it touches are
rebuilt shrunk (the first ``k`` channels kept: timing does not care which) and timed alone
with ``torch.utils.benchmark`` (warm-up, then the median of ``blocked_autorange``). Functional
ops outside leaf modules (a residual ``add``) are not timed; their share of the dense model's
time is held constant by the predictor. Timing units alone instead of whole pruned models
keeps the cost at a few seconds per group and makes a group's own effect measurable at all.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import platform
import statistics
import time
from typing import AbstractSet, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._progress import progress_bar
from ..apply.resize import resizer_for
from ..apply.shrink import cut, cuts_by_name
from ..groups import ChannelGroups, Group
from ..masks import PruningPlan
from ..masks.keep import top_channels
from .heap import timing_memory
from .latency import MODEL_CALLS, UNIT_CALLS, time_ms
from .latency_table import UNIT_INPUTS, Curve, LatencyTable, Setup

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STEPS = (1, 8, 16, 32)  # rounding steps probed below the half-way count: does a step this size save time?
FRACTIONS = (0.75, 0.25, 0.125)


@dataclasses.dataclass(frozen=True)
class Unit:
    name: str        # the graph node of the call's output
    module: str      # the leaf module's path
    source: str      # the node whose output the call reads
    index: int
    touching: tuple[str, ...]  # centers of the measured groups on its input or output
    order: tuple[int, ...] | None = None  # its input's dims, outermost in memory first (None: contiguous)


def probe_counts(channels: int) -> tuple[list[int], int]:
    """Kept counts to time for a group (ascending, ending at ``channels``) and the probe ``M``.

    ``M`` is about half the channels, aligned to the largest of 64/32/16/8 that fits; the
    counts ``M - s`` for ``s`` in :data:`STEPS` show which rounding step saves time
    (:func:`learn_round_to`); quarter points aligned to 8 trace the rest of the curve.
    """
    half = channels // 2
    align = next((a for a in (64, 32, 16, 8) if half >= a), 1)
    probe = max(1, half // align * align)
    base = 8 if channels >= 32 else 1
    counts = {channels, probe}
    counts.update(max(base, int(channels * f) // base * base) for f in FRACTIONS)
    counts.update(probe - s for s in STEPS if s < probe)
    return sorted(c for c in counts if 1 <= c <= channels), probe


def _blocks(group: Group) -> int:
    """How many blocks must keep equal counts (a grouped conv's groups), 1 for most groups."""
    return group.experts if group.rounds_total else 1


def group_probe_counts(group: Group) -> tuple[list[int], int]:
    """:func:`probe_counts` for a group: counts of one block times the blocks, so that every
    block (a grouped conv's group) keeps the same count at every probe."""
    blocks = _blocks(group)
    counts, probe = probe_counts(group.channels // blocks)
    return [c * blocks for c in counts], probe * blocks


def whole_probe_counts(group: Group) -> list[int]:
    """Kept counts to time a group losing whole conv groups (``conv_groups: whole``): all,
    about 3/4, 1/2, 1/4 and 1/8 of its conv groups, and one; each count whole conv groups."""
    blocks = {group.experts} | {max(1, round(group.experts * f)) for f in (0.75, 0.5, *FRACTIONS[1:])}
    return [b * group.block_width for b in sorted(blocks)]


def group_round_to(group: Group, totals: dict[int, float]) -> int:
    """:func:`learn_round_to` for a group, learned per block and scaled back to the group."""
    blocks = _blocks(group)
    return blocks * learn_round_to(group.channels // blocks, {k // blocks: ms for k, ms in totals.items()})


def timing_plan(groups: ChannelGroups, kept: Mapping[str, int], whole: AbstractSet[str] = frozenset()) -> PruningPlan:
    """A plan keeping ``kept[center]`` channels of each group, whichever (timing does not care
    which): the first of each block, so that blocks keep equal counts as a prune would; the
    first whole conv groups of the groups in ``whole``."""
    return PruningPlan(groups, {c: top_channels(groups[c], np.zeros(groups[c].channels), k, c in whole)
                                for c, k in kept.items() if k < groups[c].channels}, {})


def learn_round_to(channels: int, totals: dict[int, float]) -> int:
    """The smallest probed step below ``M`` that saves at least half the time a step that size
    saves on average between ``M`` and all channels; a larger alignment when none does."""
    _, probe = probe_counts(channels)
    steps = [s for s in STEPS if s < probe and probe - s in totals]
    if not steps or probe == channels:
        return 1
    slope = (totals[channels] - totals[probe]) / (channels - probe)
    if slope > 0:
        for s in steps:
            if totals[probe] - totals[probe - s] >= 0.5 * s * slope:
                return s
    return min(2 * max(steps), probe)


def find_units(model: nn.Module, groups: ChannelGroups, measured: Iterable[str]) -> list[Unit]:
    """Leaf-module calls that read one floating-point tensor from outside the module."""
    graph = groups.graph
    leaves = {name for name, m in model.named_modules() if not any(True for _ in m.children())}
    index = {g.center: i for i, g in enumerate(groups.groups)}
    wanted = {index[c] for c in measured}
    units = []
    for node, attrs in sorted(graph.nodes(data=True), key=lambda kv: kv[1]["order"]):
        module = attrs.get("module", "")
        if attrs["kind"] != "call" or module not in leaves or node.partition("#")[0] != module:
            continue
        ref = attrs["args"][0] if attrs["args"] else None
        source = getattr(ref, "node", None)
        if source is None or graph.nodes[source]["kind"] not in ("call", "input") \
                or graph.nodes[source].get("module") == module \
                or not graph.nodes[source]["out_dtypes"][ref.index].startswith("torch.float"):
            continue
        seen = set()
        for mapping in (groups.channel_map(source, ref.index), groups.channel_map(node, 0)):
            for group_index, _ in mapping.values():
                seen.update(int(i) for i in np.unique(group_index) if i in wanted)
        touching = tuple(groups.groups[i].center for i in sorted(seen))
        units.append(Unit(node, module, source, ref.index, touching))
    return units


def dim_order(x: torch.Tensor) -> tuple[int, ...]:
    """``x``'s dims from outermost to innermost in memory (ties in logical order): contiguous
    is ``(0, 1, ..., n-1)``, channels_last ``(0, 2, 3, 1)``."""
    return tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), d)))


def with_input_orders(model: nn.Module, inputs: Any, units: Sequence[Unit]) -> list[Unit]:
    """``units`` with the memory order each one's input has when ``model`` (placed: see
    :func:`place_model`) runs ``inputs`` (placed), seen by forward pre-hooks.

    A unit is timed alone on a fresh input, which must be laid out as in the model: in a
    channels_last ConvNeXt the (N, H, W, C) tensor a permute hands to LayerNorm and Linear is
    contiguous, while the same shape made channels_last puts C at stride H (there its Linear
    units timed 1.5-4x their real time, at random counts, and the table mispredicted every cut
    of the residual stream). A call the run does not make keeps a contiguous input."""
    by_module: dict[str, dict[int, str]] = {}
    for u in units:
        call = int(u.name.partition("#")[2] or 0)
        by_module.setdefault(u.module, {})[call] = u.name
    orders: dict[str, tuple[int, ...]] = {}

    def recorder(path: str) -> Any:
        calls = itertools.count()

        def hook(_module: nn.Module, args: tuple) -> None:
            name = by_module[path].get(next(calls))
            if name is not None and args and isinstance(args[0], torch.Tensor):
                orders[name] = dim_order(args[0])
        return hook

    handles = [model.get_submodule(path).register_forward_pre_hook(recorder(path)) for path in by_module]
    try:
        with torch.inference_mode():
            model_call(model, inputs)()
    finally:
        for handle in handles:
            handle.remove()
    return [dataclasses.replace(u, order=orders.get(u.name)) for u in units]


def _place(x: torch.Tensor, setup: Setup) -> torch.Tensor:
    x = x.to(device=setup.device, dtype=DTYPES[setup.dtype] if x.is_floating_point() else x.dtype)
    return x.contiguous(memory_format=torch.channels_last) if setup.layout == "channels_last" and x.dim() == 4 else x


def place_model(model: nn.Module, setup: Setup) -> nn.Module:
    """An eval-mode copy of ``model`` on the setup's device, dtype and memory format."""
    return _placed(copy.deepcopy(model), setup)


def placed_shrunk(model: nn.Module, plan: PruningPlan, setup: Setup) -> nn.Module:
    """A copy of ``model`` shrunk by ``plan`` and placed as :func:`place_model` places it, for
    timing only (``Pruner.apply_masks`` is what verifies a prune): one copy, shrunk, then moved."""
    from ..apply import shrink

    pruned = copy.deepcopy(model)
    shrink(pruned, plan, log_changes=False)
    return _placed(pruned, setup)


def _placed(model: nn.Module, setup: Setup) -> nn.Module:
    """``model`` itself moved to the setup's device, dtype and memory format, in eval mode."""
    fmt = torch.channels_last if setup.layout == "channels_last" else torch.preserve_format
    return model.to(device=setup.device, dtype=DTYPES[setup.dtype], memory_format=fmt).eval()


def place_inputs(inputs: Any, setup: Setup) -> Any:
    if isinstance(inputs, torch.Tensor):
        return _place(inputs, setup)
    if isinstance(inputs, dict):
        return {k: place_inputs(v, setup) for k, v in inputs.items()}
    return tuple(place_inputs(v, setup) for v in inputs)


def model_call(model: nn.Module, inputs: Any) -> Callable[[], Any]:
    """``model`` on ``inputs`` as a call of no arguments: keyword tensors from a dict,
    positional ones from a tuple or a single tensor (the shapes :func:`place_inputs` keeps)."""
    if isinstance(inputs, dict):
        return lambda: model(**inputs)
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    return lambda: model(*args)


def model_ms(model: nn.Module, inputs: Any, setup: Setup, min_run_time: float, statistic: str = "median") -> float:
    """Milliseconds per forward of a placed model (see :func:`place_model`) on placed inputs,
    over ``min_run_time`` or :data:`MODEL_CALLS` calls, whichever is longer."""
    return time_ms(model_call(model, inputs), (), setup.threads, min_run_time, statistic, MODEL_CALLS)


def alternate(placed: Sequence[nn.Module], inputs: Any, setup: Setup, rounds: int, min_run_time: float,
              statistic: str = "median") -> list[list[float]]:
    """Milliseconds of each placed model, timed back to back, ``rounds`` times: one row per round.
    On a shared machine each timing moves with the load; models timed in the same round see
    about the same load, so ratios within a round (:func:`median_ratio`) move less."""
    return [[model_ms(m, inputs, setup, min_run_time, statistic) for m in placed] for _ in range(rounds)]


def median_ratio(rows: Sequence[Sequence[float]], over: int, under: int = 0) -> float:
    """The median over rounds of model ``over``'s time divided by model ``under``'s."""
    return float(statistics.median(r[over] / r[under] for r in rows))


def _shrunk(module: nn.Module, path: str, plan: PruningPlan) -> nn.Module:
    """A copy of a leaf module with the plan's positions removed from its own tensors."""
    out = copy.deepcopy(module)
    old = dict(out.__dict__)
    changed = False
    with torch.no_grad():
        for name, (keeps, orders) in cuts_by_name(plan).items():
            owner, _, attr = name.rpartition(".")
            if owner != path:
                continue
            value = cut(getattr(out, attr), keeps, orders)
            if attr in out._parameters:
                out._parameters[attr] = nn.Parameter(value, requires_grad=False)
            else:
                out._buffers[attr] = value
            changed = True
    resize = resizer_for(out)
    if changed and resize is not None:
        resize(out, old)
    return out


def _input(unit: Unit, groups: ChannelGroups, plan: PruningPlan | None, setup: Setup) -> torch.Tensor:
    """A random input for ``unit`` at the plan's kept counts, in the memory order it has in the model."""
    shape = list(groups.graph.nodes[unit.source]["out_shapes"][unit.index])
    if plan is not None:
        for dim, keep in plan.surviving(unit.source, unit.index).items():
            shape[dim] = int(keep.sum())
    order = unit.order if unit.order is not None and len(unit.order) == len(shape) else tuple(range(len(shape)))
    stored = torch.randn([shape[d] for d in order]).permute([order.index(d) for d in range(len(shape))])
    dtype = DTYPES[setup.dtype] if stored.is_floating_point() else stored.dtype
    return stored.to(device=setup.device, dtype=dtype)


def time_unit(model: nn.Module, unit: Unit, groups: ChannelGroups, setup: Setup, min_run_time: float,
              plan: PruningPlan | None = None, statistic: str = "median") -> float:
    """Milliseconds of one unit alone, shrunk by ``plan``, over ``min_run_time`` or
    :data:`~.latency.UNIT_CALLS` calls, whichever is longer: a batch-8 ConvNeXt stage-1 layer
    (25-50 ms) timed once measured 14-61 ms from one timing to the next, which made its
    group's curve climb and fall at random; the minimum of three calls held within 10-20 %."""
    module = model.get_submodule(unit.module)
    if plan is not None:
        module = _shrunk(module, unit.module, plan)
        if setup.layout == "channels_last":  # slicing gives contiguous weights back
            module = module.to(memory_format=torch.channels_last)
    return time_ms(module, (_input(unit, groups, plan, setup),), setup.threads, min_run_time, statistic, UNIT_CALLS)


def _runs(model: nn.Module, unit: Unit, groups: ChannelGroups, setup: Setup) -> bool:
    """A unit is timed only if its module, fed the traced input shape, gives the traced output shape."""
    try:
        with torch.inference_mode():
            out = model.get_submodule(unit.module)(_input(unit, groups, None, setup))
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot time this call alone"
        log.debug("not timing %s alone: %s", unit.name, exc)
        return False
    return isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(groups.graph.nodes[unit.name]["out_shapes"][0])


def measurable(groups: ChannelGroups, skip: dict[str, str]) -> list[Group]:
    """Prunable groups a table can cover: not experts stacked in one tensor (a grouped conv's
    groups are covered, probed at counts every conv group can keep: :func:`group_probe_counts`)."""
    return [g for g in groups.prunable if g.center not in skip and (g.blocks is None or g.rounds_total)]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{platform.processor() or platform.machine()} ({platform.system()})"


def measure_table(model: nn.Module, inputs: Any, groups: ChannelGroups, setup: Setup, *, model_name: str,
                  fingerprint: str, input_shapes: list[str], skip: dict[str, str],
                  min_run_time: float = 0.05, statistic: str = "median") -> LatencyTable:
    """Time the dense model, every unit, and every measurable group's units at its probe counts."""
    placed = place_model(model, setup)
    parts = measurable(groups, skip)
    units = with_input_orders(placed, place_inputs(inputs, setup), find_units(placed, groups, [g.center for g in parts]))
    units = [u for u in units if _runs(placed, u, groups, setup)]
    by_group = {g.center: [u for u in units if g.center in u.touching] for g in parts}
    counts = {g.center: group_probe_counts(g)[0] for g in parts}
    wholes = {g.center: whole_probe_counts(g) for g in parts if g.whole_conv_groups}
    shrunk = {c: counts[c][:-1] + wholes.get(c, [0])[:-1] for c in by_group}
    bar = progress_bar(len(units) + sum(len(shrunk[c]) * len(us) for c, us in by_group.items()), "latency table")
    dense_units, started = {}, time.perf_counter()
    for u in units:
        dense_units[u.name] = time_unit(placed, u, groups, setup, min_run_time, statistic=statistic)
        bar.update()
    pace = (time.perf_counter() - started) / max(1, len(units))
    log.info("timed %d units in %.0f s; %d shrunk variants of %d groups to go: about %.0f s at that pace",
             len(units), pace * len(units), bar.total - len(units), len(parts), pace * (bar.total - len(units)))

    def timed(g: Group, kept_counts: list[int], whole: bool) -> dict[str, list[float]]:
        """Per unit the group touches, its milliseconds at each count (whole conv groups if ``whole``)."""
        ms = {u.name: [] for u in by_group[g.center]}
        for k in kept_counts:
            plan = timing_plan(groups, {g.center: k}, {g.center} if whole else ()) if k < g.channels else None
            for u in by_group[g.center]:
                ms[u.name].append(dense_units[u.name] if plan is None else
                                  time_unit(placed, u, groups, setup, min_run_time, plan, statistic))
                bar.update(plan is not None)
        return ms

    curves = {}
    for g in parts:
        if not by_group[g.center]:
            continue
        ms = timed(g, counts[g.center], False)
        totals = {k: sum(v[i] for v in ms.values()) for i, k in enumerate(counts[g.center])}
        whole = None
        if g.center in wholes:
            whole = Curve(g.channels, g.block_width, wholes[g.center], timed(g, wholes[g.center], True))
        curves[g.center] = Curve(g.channels, group_round_to(g, totals), counts[g.center], ms, whole)
    bar.close()
    half = {c: group_probe_counts(groups[c])[1] for c in curves}
    dense, calibration = _whole_model(model, inputs, groups, half, setup, max(20 * min_run_time, 1.0), statistic)
    return LatencyTable(setup, device_name(setup.device), model_name, fingerprint, input_shapes, dense,
                        dense_units, curves, torch.__version__, min_run_time, statistic, calibration,
                        timing_memory(), UNIT_INPUTS)


def _whole_model(model: nn.Module, inputs: Any, groups: ChannelGroups, half: dict[str, int], setup: Setup,
                 min_run_time: float, statistic: str) -> tuple[float, dict[str, Any] | None]:
    """The dense model's time and, to calibrate the predictor, the time with every group at
    ``half`` (timed alternately); without a calibration if that model cannot be built or run."""
    plan = timing_plan(groups, half)
    try:
        dense_ms, half_ms = measure_plan(model, inputs, plan, setup, 3 * min_run_time, statistic)
    except Exception as exc:  # noqa: BLE001 - a model whose code fixes a size: no calibration point
        log.info("no calibration point (the model at half width does not run: %s)", exc)
        placed = place_model(model, setup)
        return model_ms(placed, place_inputs(inputs, setup), setup, min_run_time, statistic), None
    return dense_ms, {"kept": half, "ms": half_ms}


def measure_plan(model: nn.Module, inputs: Any, plan: PruningPlan, setup: Setup,
                 min_run_time: float = 0.5, statistic: str = "median") -> tuple[float, float]:
    """Measured milliseconds of the dense model and of a copy shrunk by ``plan`` (timing only:
    ``Pruner.apply_masks`` is what verifies a prune), alternating three times, medians."""
    placed = [place_model(model, setup), placed_shrunk(model, plan, setup)]
    rounds = alternate(placed, place_inputs(inputs, setup), setup, 3, min_run_time / 3, statistic)
    return tuple(float(np.median([r[i] for r in rounds])) for i in range(2))  # type: ignore[return-value]
