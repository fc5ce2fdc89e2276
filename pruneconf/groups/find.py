"""Resolve channel groups: run every op's rule, solve the unions, name each group.

A *group* is a set of channels that must be pruned together: all channels coupled (through
adds, norms, depthwise convs…) with the output channels of one or more weight layers (the
group's *sources*). Its *center* is the source that runs first. Every parameter dimension
the group's channels flow through is a *member*: pruned rows (sources), pruned columns
(consumers) or per-channel parameters (followers).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import networkx as nx
import numpy as np

from .._gc import paused_gc
from . import rules  # noqa: F401  (registers the rules)
from .context import SOURCE, RuleContext, TensorLabels
from .conv_groups import conv_group_blocks
from .labels import connected_roots
from .pieces import piece_cells
from .registry import rule_for, unsupported
from .routes import SHUFFLE, Routing, Step, build_routing
from .stacks import check_coverage, expert_blocks, stack_links

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Member:
    """One parameter dimension touched by a group."""

    param: str
    layer: str
    dim: int
    role: str
    index: np.ndarray     # the indices along ``dim`` that belong to the group, ascending
    channels: np.ndarray  # the group channel of each of those indices
    length: int           # the size of ``dim``
    slice: int | None = None  # expert ``slice`` of a stacked parameter: ``index`` runs along
    #                           ``dim`` of ``param`` within ``param[slice]`` (see :mod:`.stacks`)

    @property
    def size(self) -> int:
        """How many indices along ``dim`` belong to the group."""
        return len(self.index)

    @property
    def dense(self) -> np.ndarray:
        """For every index along ``dim``: its group channel, or -1 outside the group."""
        out = np.full(self.length, -1, dtype=np.int64)
        out[self.index] = self.channels
        return out


@dataclasses.dataclass
class Group:
    """Channels pruned together, named by the layer whose output channels come first."""

    center: str
    channels: int
    sources: list[str]
    members: list[Member]
    reasons: list[str]
    notes: list[str]   # kinds of the notes on the group's channels, e.g. ``channel_stats``
    order: int
    noted_at: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # note kind -> op nodes
    blocks: np.ndarray | None = None  # the block of each channel (an expert stacked in one tensor,
    #                                   a grouped conv's group): every block keeps the same count
    rounds_total: bool = False  # ``round_to`` rounds the total, not each block (a grouped conv's
    #                             groups: one tensor; each expert is a matrix product of its own)
    whole_conv_groups: bool = False  # each block is a conv group of every grouped conv: ``conv_groups: whole``
    pinned: np.ndarray = dataclasses.field(default_factory=lambda: np.empty(0, np.int64))  # channels
    #                                   always kept (constants the model adds: padding channels)
    pinned_by: list[str] = dataclasses.field(default_factory=list)  # why, per pinning op
    routing: Routing | None = None  # channels moved by a channel shuffle: which to keep, in
    #                                 which order each member sees them (see :mod:`.routes`)
    pieces: np.ndarray | None = None  # sections of a split sized one by one: the cell of each
    #                                   channel; each cell keeps its own share (see :mod:`.pieces`)

    @property
    def experts(self) -> int:
        """How many experts share this group's width (1 for an ordinary group)."""
        return 1 if self.blocks is None else int(self.blocks.max()) + 1

    @property
    def block_width(self) -> int:
        """Channels per block: a conv group's width where ``whole_conv_groups``."""
        return self.channels // self.experts

    @property
    def prunable(self) -> bool:
        return not self.reasons and self.channels > 1

    @property
    def layers(self) -> list[str]:
        """Member layers, in first-seen order, without repeats."""
        return list(dict.fromkeys(m.layer for m in self.members))


class ChannelGroups:
    """The result of :func:`find_groups`: groups plus the channel map of every tensor."""

    def __init__(self, graph: nx.DiGraph, groups: list[Group], roots: np.ndarray,
                 group_of_root: np.ndarray, channel_of_root: np.ndarray,
                 tensors: dict[tuple[str, int], TensorLabels], grouped: dict[str, int] | None = None) -> None:
        self.graph = graph
        # weights of grouped convs pruned inside their groups -> conv groups (see .conv_groups)
        self.grouped = grouped or {}
        self.groups = groups
        self.by_center = {g.center: g for g in groups}
        self._roots, self._group_of_root, self._channel_of_root = roots, group_of_root, channel_of_root
        self._tensors = tensors

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, center: str) -> Group:
        return self.by_center[center]

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def groups_of_layer(self, layer: str) -> list[Group]:
        return [g for g in self.groups if layer in g.layers]

    def channel_map(self, node: str, index: int = 0) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """For each labelled dim of a node's output: ``(group index, group channel)`` per position.

        ``group index`` is the position in :attr:`groups` (``-1`` where the position is in
        no group), ``group channel`` the channel within that group.
        """
        out = {}
        for dim, labels in self._tensors.get((node, index), {}).items():
            roots = self._roots[labels]
            out[dim] = (self._group_of_root[roots], self._channel_of_root[roots])
        return out


def _live_nodes(graph: nx.DiGraph) -> list[str]:
    """Nodes whose results reach the output, in forward order (dead code cannot couple)."""
    nodes, pred = graph.nodes, graph.pred
    ordered = sorted(graph, key=lambda n: nodes[n]["order"])
    live = {graph.graph["output"]}
    for node in reversed(ordered):  # a tensor is made before it is used: one sweep back finds every ancestor
        if node in live:
            live.update(pred[node])
    return [n for n in ordered if n in live and nodes[n]["kind"] in ("call", "output")]


def find_groups(graph: nx.DiGraph) -> ChannelGroups:
    """Resolve which channels of ``graph`` (from :func:`pruneconf.trace`) prune together."""
    with paused_gc():
        return _find_groups(graph)


def _find_groups(graph: nx.DiGraph) -> ChannelGroups:
    """Run the rules; where a split reshape's carrier dim gets contracted (attention heads
    split off a projection), run them again with those splits keeping whole blocks, and
    where a rule found that a split's outer dim holds the channels, with that dim carrying;
    where the channels of a shuffle cannot be routed, again with that shuffle coupling them,
    and where a grouped conv's groups cannot keep equal counts, with it losing whole groups."""
    nodes = _live_nodes(graph)
    coupled: frozenset[str] = frozenset()
    while True:
        ctx = _run_rules(graph, nodes, frozenset(), frozenset(), coupled)
        while not (ctx.contracted_splits <= ctx.whole_blocks and ctx.wanted_outer_splits <= ctx.outer_splits):
            ctx = _run_rules(graph, nodes, ctx.whole_blocks | ctx.contracted_splits,
                             ctx.outer_splits | ctx.wanted_outer_splits, coupled)
        roots = ctx.space.solve()
        for check in ctx.deferred:
            check(roots)
        result, unroutable = _assemble(graph, ctx, roots)
        if not unroutable:
            return result
        log.debug("shuffles coupling their channels, grouped convs their groups, instead: %s", sorted(unroutable))
        coupled |= unroutable


def _run_rules(graph: nx.DiGraph, nodes: list[str], whole_blocks: frozenset[str],
               outer_splits: frozenset[str], coupled: frozenset[str] = frozenset()) -> RuleContext:
    ctx = RuleContext(graph, whole_blocks, outer_splits, coupled)
    for node in nodes:
        ctx.at(node)
        if node in ctx.fixed:  # a later op of a pattern an earlier rule followed (a shuffle's transpose)
            ctx.set_out(ctx.fixed.pop(node))
        else:
            _apply_rule(ctx)
        for i, shape in enumerate(ctx.out_shapes):
            if not ctx.has_out(i):  # a rule that says nothing about an output: be safe
                ctx.set_out(ctx.blocked_labels(shape, f"no channel rule for output {i} of '{node}'"), i)
    check_coverage(ctx)
    return ctx


def _apply_rule(ctx: RuleContext) -> None:
    """Run the op's rule; a rule that trips on an argument form it does not know falls back
    to blocking the op, so an odd call is reported as not prunable instead of crashing.
    Unions it made before failing only couple more channels, which is safe."""
    rule = rule_for(ctx.op)
    try:
        rule(ctx)
    except Exception as exc:  # noqa: BLE001 - any rule failure means "cannot follow this op"
        if rule is unsupported:
            raise
        log.debug("rule %s failed at %s: %r", rule.__name__, ctx.node, exc)
        unsupported(ctx, f"could not follow '{ctx.op}' ({type(exc).__name__}: {exc})")


def _findings(items, comp: np.ndarray, roots: np.ndarray, is_group: np.ndarray) -> dict[int, list[str]]:
    """``(labels, text)`` pairs (block reasons, notes) gathered per group component."""
    out: dict[int, list[str]] = {}
    for labels, text in items:
        hit = comp[roots[labels]]
        for c in np.unique(hit[is_group[hit]]).tolist():
            texts = out.setdefault(c, [])
            if text not in texts:
                texts.append(text)
    return out


def _add_members(groups: list[Group], index_of_comp: dict[int, int], roles, ctx: RuleContext, roots: np.ndarray,
                 comp: np.ndarray, channel_of_root: np.ndarray, layer_name) -> None:
    """A :class:`Member` for each parameter dim in each group it has channels in. Most dims
    lie in one component: those are told apart for every dim at once (the least and the
    greatest component over each dim's labels agree) and take all their indices; only the
    rest are split per component (a per-dim test was most of assembling a group list)."""
    roles = [r for r in roles if len(ctx.params[(r.param, r.dim)])]
    if not roles:
        return
    labels = [roots[ctx.params[(r.param, r.dim)]] for r in roles]
    flat = comp[np.concatenate(labels)]
    starts = np.cumsum([0] + [len(lab) for lab in labels[:-1]])
    whole = (np.minimum.reduceat(flat, starts) == np.maximum.reduceat(flat, starts)).tolist()
    first = flat[starts].tolist()
    for r, lab, one, c0 in zip(roles, labels, whole, first):
        stacked, at = ctx.slices.get(r.param, (r.param, None))
        dim = r.dim if at is None else r.dim + 1  # a slice's dims are the stacked tensor's from 1
        parts = [(c0, None)] if one else _split_by_component(comp[lab])
        for c, index in parts:
            if c in index_of_comp:
                chans = channel_of_root[lab] if index is None else channel_of_root[lab[index]]
                index = np.arange(len(lab)) if index is None else index
                groups[index_of_comp[c]].members.append(Member(
                    stacked, layer_name(r.param), dim, r.role, index, chans, len(lab), at))


def _split_by_component(member_comp: np.ndarray):
    """``(component, ascending indices)`` for each component a member dimension touches.

    Linear in the dimension's size, however many groups it spans (a conv after a long
    chain of concatenations reads from hundreds).
    """
    order = np.argsort(member_comp, kind="stable")
    sorted_comp = member_comp[order]
    bounds = [0, *(np.flatnonzero(np.diff(sorted_comp)) + 1).tolist(), len(order)]
    for start, stop in zip(bounds[:-1], bounds[1:]):
        yield int(sorted_comp[start]), order[start:stop]


def _number_channels(labels: np.ndarray, channel_of_root: np.ndarray, start: int) -> int:
    """Number the roots of ``labels`` not numbered yet, in order of first appearance."""
    new = labels[channel_of_root[labels] < 0]
    _, first = np.unique(new, return_index=True)
    fresh = new[np.sort(first)]
    channel_of_root[fresh] = np.arange(start, start + len(fresh))
    return start + len(fresh)


def _center_name(layer: str, param: str, dim: int, taken: set[str]) -> str:
    """A group is named by its center layer; a layer that heads two groups (an LSTM's hidden
    units and its projections) names the second one by the parameter, and a parameter that
    heads two (a raw embedding table tied to the output layer: its columns and its rows) by
    the dimension too, so names stay unique."""
    name = next(n for n in (layer, param, f"{param}:dim{dim}") if n not in taken)
    taken.add(name)
    return name


def _pin_channels(pins, comp: np.ndarray, roots: np.ndarray, channel_of_root: np.ndarray,
                  by_comp: dict[int, Group]) -> None:
    """Record on each group the channels pinned by a rule (see ``RuleContext.pin``); a
    group whose every channel is pinned has nothing to prune, and says which op pins it."""
    for labels, reason in pins:
        hit = roots[labels]
        for c in np.unique(comp[hit]).tolist():
            group = by_comp.get(c)
            if group is None:
                continue
            chans = channel_of_root[hit[comp[hit] == c]]
            group.pinned = np.union1d(group.pinned, chans[chans >= 0])
            if reason not in group.pinned_by:
                group.pinned_by.append(reason)
    for group in by_comp.values():
        if group.pinned.size and group.pinned.size >= group.channels and not group.reasons:
            group.reasons.append(f"every channel is kept: {group.pinned_by[0]}")


def _route_links(steps: list[Step], roots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Root pairs joining every channel a trunk's shuffles and splits move into one group."""
    arrays = [roots[np.concatenate([step.source, *step.outputs])] for step in steps]
    left = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    right = np.concatenate([np.full(a.shape, a[0]) for a in arrays]) if arrays else left
    return left, right


def _route_groups(steps: list[Step], groups: list[Group], group_of: np.ndarray,
                  channel_of: np.ndarray) -> frozenset[str]:
    """Give each group whose channels are shuffled its routing (blocks: its sources); return
    the shuffles of the groups whose channels cannot be routed."""
    unroutable: set[str] = set()
    by_group: dict[int, list[Step]] = {}
    for step in steps:
        index = int(group_of[step.source[0]])
        if index >= 0:
            by_group.setdefault(index, []).append(step.relabel(lambda labels: channel_of[labels]))
    for index, routed in by_group.items():
        group = groups[index]
        if group.reasons:
            continue
        routing, why = build_routing(group.members, routed, group.channels)
        if why or group.blocks is not None:  # or experts stacked in one tensor
            log.debug("%s: %s", group.center, why or "stacked experts")
            unroutable.update(step.node for step in routed if step.kind == SHUFFLE)
            continue
        group.routing, group.blocks = routing, np.empty(group.channels, dtype=np.int64)
        for b, channels in enumerate(routing.blocks):
            group.blocks[channels] = b
    return frozenset(unroutable)


def _assemble(graph: nx.DiGraph, ctx: RuleContext, roots: np.ndarray) -> tuple[ChannelGroups, frozenset[str]]:
    real = {name: stacked for name, (stacked, _) in ctx.slices.items()}
    layer_name = lambda param: graph.graph["layers"][real.get(param, param)]  # noqa: E731
    roles = sorted(ctx.all_roles(), key=lambda r: graph.nodes[r.node]["order"])
    sources = [(r, roots[ctx.params[(r.param, r.dim)]]) for r in roles if r.role == SOURCE]
    # Sources whose channels meet form one group: link every root of a source to its first,
    # and the experts of one stacked tensor, which must keep the same width (see .stacks).
    # The sources of one shuffled trunk too, which keep the same width (see .routes).
    stack_left, stack_right = stack_links(ctx, roots, roles)
    route_left, route_right = _route_links(ctx.steps, roots)
    left = np.concatenate([rl for _, rl in sources] + [stack_left, route_left]) if sources else np.empty(0, np.int64)
    right = np.concatenate([np.full(rl.shape, rl[0]) for _, rl in sources] + [stack_right, route_right]) if sources else left
    comp = connected_roots(len(roots), left, right)
    is_group = np.zeros(len(roots), dtype=bool)
    is_group[[comp[rl[0]] for _, rl in sources]] = True
    blocked = _findings(ctx.space.blocks, comp, roots, is_group)
    notes = _findings(((n.labels, n.kind) for n in ctx.notes), comp, roots, is_group)
    noted_at = {kind: _findings(((n.labels, n.node) for n in ctx.notes if n.kind == kind), comp, roots, is_group)
                for kind in dict.fromkeys(n.kind for n in ctx.notes)}

    channel_of_root = np.full(len(roots), -1, dtype=np.int64)
    by_comp: dict[int, Group] = {}
    centers: set[str] = set()
    slice_sources: dict[int, list[tuple[int, np.ndarray]]] = {}
    for r, rl in sources:
        c = int(comp[rl[0]])
        group = by_comp.get(c)
        if group is None:
            center = _center_name(layer_name(r.param), r.param, r.dim, centers)
            group = by_comp[c] = Group(center=center, channels=0, sources=[], members=[],
                                       reasons=blocked.get(c, []), notes=notes.get(c, []),
                                       order=graph.nodes[r.node]["order"],
                                       noted_at={kind: at[c] for kind, at in noted_at.items() if c in at})
        group.sources.append(layer_name(r.param))
        group.channels = _number_channels(rl, channel_of_root, group.channels)
        if r.param in ctx.slices:
            slice_sources.setdefault(c, []).append((ctx.slices[r.param][1], channel_of_root[rl]))
    _pin_channels(ctx.pins, comp, roots, channel_of_root, by_comp)
    widths = {c: g.channels for c, g in by_comp.items()}
    for c, cells in piece_cells(ctx.shares, comp, roots, channel_of_root, widths).items():
        by_comp[c].pieces = cells
    for c, group in by_comp.items():
        group.blocks, why = expert_blocks(group.channels, slice_sources.get(c, []))
        if why:
            group.reasons.append(why)
    refused = conv_group_blocks(ctx.grouped, by_comp, comp, roots, channel_of_root)
    for group in by_comp.values():
        if group.channels <= 1 and not group.reasons:
            group.reasons.append("a single channel once its couplings are resolved")
    index_of_comp = {c: k for k, (c, _) in enumerate(sorted(by_comp.items(), key=lambda cg: cg[1].order))}
    groups = sorted(by_comp.values(), key=lambda g: g.order)
    index_by_comp = np.full(len(roots), -1, dtype=np.int64)
    index_by_comp[list(index_of_comp)] = list(index_of_comp.values())
    group_of_root = np.where(channel_of_root >= 0, index_by_comp[comp], -1)
    _add_members(groups, index_of_comp, roles, ctx, roots, comp, channel_of_root, layer_name)
    unroutable = _route_groups(ctx.steps, groups, index_by_comp[comp[roots]], channel_of_root[roots])
    grouped = {param: groups for node, (param, groups, _) in ctx.grouped.items() if node not in refused}
    result = ChannelGroups(graph, groups, roots, group_of_root, channel_of_root, ctx.tensors, grouped)
    log.debug("found %d groups (%d prunable)", len(groups), len(result.prunable))
    return result, unroutable | refused


__all__ = ["ChannelGroups", "Group", "Member", "find_groups"]
