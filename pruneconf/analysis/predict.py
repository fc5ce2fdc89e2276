"""Predict MACs and parameters from kept channel counts, without shrinking anything.

Pruning a group removes positions along every member dimension. A convolution or linear
layer costs ``MACs ∝ Π weight dims`` (output elements grow with ``weight.shape[0]``, the
reduction with the rest), so its MACs after pruning are its MACs before times the kept
fraction of each weight dimension, and a parameter's size is the product of its kept
dimensions. That makes a prediction exact for conv/linear networks and cheap enough to
call thousands of times while searching a budget. Products of two activations (``matmul``,
attention) have no weight to read and are held at their dense cost: for such models the
prediction is an upper bound, and what a prune actually realises is measured on the
applied model.
"""
from __future__ import annotations

import dataclasses
import math
from typing import AbstractSet, Mapping

import networkx as nx

from .costs import node_macs
from ..groups import ChannelGroups
from ..groups.find import Member

_WEIGHTED = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear"}


@dataclasses.dataclass(frozen=True)
class Costs:
    """Totals and per-group shares (shares overlap, as in ``group_costs``)."""

    macs: int
    params: int
    group_macs: dict[str, int]
    group_params: dict[str, int]


def _weight_of(attrs: dict, graph: nx.DiGraph) -> str | None:
    args = attrs["args"]
    ref = args[1] if len(args) > 1 else attrs["kwargs"].get("weight")
    node = getattr(ref, "node", None)
    return graph.nodes[node]["target"] if node is not None and graph.nodes[node]["kind"] == "param" else None


def _experts(m: Member, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """A member on one expert's slice of a stacked parameter counts for 1/experts of it."""
    return 1 if m.slice is None else shapes[m.param][0]


class CostModel:
    """MACs and parameters of ``groups``' model for any kept channel count per group."""

    def __init__(self, groups: ChannelGroups) -> None:
        self.groups = groups
        graph = groups.graph
        params = graph.graph["params"]  # a stacked parameter's full shape, not one slice's
        self.shapes: dict[str, tuple[int, ...]] = {graph.nodes[n]["target"]: tuple(params[graph.nodes[n]["target"]])
                                                   for n in graph if graph.nodes[n]["kind"] == "param"}
        self.fixed_macs = 0
        self.weighted: list[tuple[str, int, list[str]]] = []  # weight, MACs, every param the op reads
        for node in graph:
            macs = node_macs(graph, node)
            if not macs:
                continue
            attrs = graph.nodes[node]
            weight = _weight_of(attrs, graph) if attrs["op"] in _WEIGHTED else None
            if weight is None:
                self.fixed_macs += macs
                continue
            reads = [graph.nodes[p]["target"] for p in graph.predecessors(node) if graph.nodes[p]["kind"] == "param"]
            self.weighted.append((weight, macs, reads))
        # a grouped conv pruned inside its groups -> its group, whose ``whole`` choice keeps the columns
        self.grouped_in = {m.param: g.center for g in groups for m in g.members
                           if m.param in groups.grouped and m.dim == 0}

    def _kept_lengths(self, kept: Mapping[str, float], whole: AbstractSet[str]) -> dict[tuple[str, int], float]:
        """Kept size of every pruned parameter dimension (a channel's positions are removed with it).
        A grouped conv in a group of ``whole`` loses whole conv groups: its columns stay."""
        lengths: dict[tuple[str, int], float] = {}
        for g in self.groups:
            if g.center not in kept:
                continue
            removed = 1.0 - kept[g.center] / g.channels
            for m in g.members:
                key = (m.param, m.dim)
                lengths[key] = lengths.get(key, float(m.length)) - m.size * removed / _experts(m, self.shapes)
        for param in self.groups.grouped:  # pruned inside its groups: columns go with their rows
            if (param, 0) in lengths and self.grouped_in.get(param) not in whole:
                lengths[(param, 1)] = self.shapes[param][1] * lengths[(param, 0)] / self.shapes[param][0]
        return lengths

    def _ratio(self, param: str, lengths: Mapping[tuple[str, int], float]) -> float:
        shape = self.shapes.get(param, ())
        return math.prod(lengths.get((param, d), n) / n for d, n in enumerate(shape) if n)

    def costs(self, kept: Mapping[str, float], whole: AbstractSet[str] = frozenset()) -> Costs:
        """Costs when each group center in ``kept`` keeps that many channels (others keep all),
        the groups in ``whole`` as whole conv groups (``conv_groups: whole``)."""
        lengths = self._kept_lengths(kept, whole)
        sizes = {p: math.prod(n * self._ratio_dim(p, d, lengths) for d, n in enumerate(s))
                 for p, s in self.shapes.items()}
        param_macs: dict[str, float] = {}
        macs = float(self.fixed_macs)
        for weight, dense, reads in self.weighted:
            now = dense * self._ratio(weight, lengths)
            macs += now
            for p in reads:
                param_macs[p] = param_macs.get(p, 0.0) + now
        group_macs, group_params = {}, {}
        for g in self.groups:
            share_macs = share_params = 0.0
            for m in g.members:
                length = lengths.get((m.param, m.dim), float(m.length))
                own = m.size * (kept.get(g.center, g.channels) / g.channels) / _experts(m, self.shapes)
                fraction = own / length if length else 0.0
                share_params += fraction * sizes.get(m.param, 0.0)
                share_macs += fraction * param_macs.get(m.param, 0.0)
            group_macs[g.center], group_params[g.center] = round(share_macs), round(share_params)
        return Costs(round(macs), round(sum(sizes.values())), group_macs, group_params)

    def _ratio_dim(self, param: str, dim: int, lengths: Mapping[tuple[str, int], float]) -> float:
        n = self.shapes[param][dim]
        return lengths.get((param, dim), n) / n if n else 1.0

    def macs(self, kept: Mapping[str, float], whole: AbstractSet[str] = frozenset()) -> float:
        """Total MACs only: the fast path a budget search calls many times."""
        lengths = self._kept_lengths(kept, whole)
        return self.fixed_macs + sum(dense * self._ratio(weight, lengths) for weight, dense, _ in self.weighted)
