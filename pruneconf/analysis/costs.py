"""Multiply-accumulates (MACs) and parameter counts read off the traced graph.

Convention ("standard MACs"): convolutions ``out_elements * in_channels / groups * kernel``,
linear layers and matrix products ``out_elements * reduced_dim`` (``einsum``: the product of
its subscripts' sizes), attention's projections and its two matrix products; biases, norms,
activations and pooling count nothing. This is
the convention of fvcore/ptflops-style counters for the layers that dominate cost.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import networkx as nx

from .._registry import Registry
from ..groups.find import ChannelGroups

MacRule = Callable[[dict, nx.DiGraph], int]
_MACS = Registry("MAC counter")
_macs = _MACS.register


def _shape(graph: nx.DiGraph, ref) -> tuple[int, ...]:
    return tuple(graph.nodes[ref.node]["out_shapes"][ref.index])


def _arg(attrs: dict, index: int, name: str, default=None):
    args = attrs["args"]
    return args[index] if len(args) > index else attrs["kwargs"].get(name, default)


@_macs("conv1d", "conv2d", "conv3d")
def _conv(attrs: dict, graph: nx.DiGraph) -> int:
    w = _shape(graph, _arg(attrs, 1, "weight"))
    return math.prod(attrs["out_shapes"][0]) * math.prod(w[1:])


@_macs("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _conv_transpose(attrs: dict, graph: nx.DiGraph) -> int:
    x, w = _shape(graph, _arg(attrs, 0, "input")), _shape(graph, _arg(attrs, 1, "weight"))
    return math.prod(x) * math.prod(w[1:])


@_macs("linear")
def _linear(attrs: dict, graph: nx.DiGraph) -> int:
    w = _shape(graph, _arg(attrs, 1, "weight"))
    return math.prod(attrs["out_shapes"][0]) * w[1]


@_macs("matmul", "mm", "bmm")
def _matmul(attrs: dict, graph: nx.DiGraph) -> int:
    a = _shape(graph, attrs["args"][0])
    return math.prod(attrs["out_shapes"][0]) * a[-1]


@_macs("einsum")
def _einsum(attrs: dict, graph: nx.DiGraph) -> int:
    """Every combination of subscript values is one product per extra operand."""
    from ..groups.rules.einsum import parse_equation

    args = attrs["args"]
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    shapes = [_shape(graph, r) for r in operands]
    subs, _ = parse_equation(args[0], [len(s) for s in shapes])
    sizes = {letter: n for sub, shape in zip(subs, shapes) for letter, n in zip(sub, shape) if n > 1}
    return max(len(operands) - 1, 0) * math.prod(sizes.values())


@_macs("multi_head_attention_forward")
def _mha(attrs: dict, graph: nx.DiGraph) -> int:
    """Query/key/value and output projections plus the two attention products."""
    q, k = _shape(graph, attrs["args"][0]), _shape(graph, attrs["args"][1])
    length, source, embed = q[0], k[0], q[-1]
    batch = q[1] if len(q) == 3 else 1
    return batch * (2 * length * embed * embed + 2 * source * embed * embed
                    + 2 * length * source * embed)


@_macs("scaled_dot_product_attention")
def _sdpa(attrs: dict, graph: nx.DiGraph) -> int:
    q, v = _shape(graph, attrs["args"][0]), _shape(graph, attrs["args"][2])
    return math.prod(q) * v[-2] + math.prod(q[:-1]) * v[-2] * v[-1]


def node_macs(graph: nx.DiGraph, node: str) -> int:
    attrs = graph.nodes[node]
    rule = _MACS.get(attrs["op"]) if attrs["kind"] == "call" else None
    return int(rule(attrs, graph)) if rule else 0


def total_macs(graph: nx.DiGraph) -> int:
    return sum(node_macs(graph, n) for n in graph)


def total_params(graph: nx.DiGraph) -> int:
    """Parameters the forward pass used (a shared parameter counts once)."""
    return sum(math.prod(graph.nodes[n]["out_shapes"][0]) for n in graph
               if graph.nodes[n]["kind"] == "param")


@dataclasses.dataclass(frozen=True)
class GroupCost:
    """MACs and parameters that depend on a group's channels (what removing all would save)."""

    macs: int
    params: int


def _param_macs(graph: nx.DiGraph) -> dict[str, int]:
    """MACs of the ops that use each parameter (summed over calls when shared)."""
    out: dict[str, int] = {}
    for node in graph:
        macs = node_macs(graph, node)
        if macs:
            for pred in graph.predecessors(node):
                if graph.nodes[pred]["kind"] == "param":
                    target = graph.nodes[pred]["target"]
                    out[target] = out.get(target, 0) + macs
    return out


def group_costs(groups: ChannelGroups) -> dict[str, GroupCost]:
    """Per group center: the MACs and parameters its channels touch.

    A member dimension contributes the fraction of its parameter (and of its op's MACs)
    that lies on the group's channels. Shares of different groups overlap: a conv counts
    for the group of its output channels and for the groups of its input channels.
    """
    graph = groups.graph
    param_macs = _param_macs(graph)
    shapes = graph.graph["params"]
    out = {}
    for g in groups:
        macs = params = 0.0
        for m in g.members:
            fraction = m.size / max(m.length, 1)
            params += fraction * math.prod(shapes[m.param])
            macs += fraction * param_macs.get(m.param, 0)
        out[g.center] = GroupCost(int(round(macs)), int(round(params)))
    return out



def tutorial_flops(graph: nx.DiGraph) -> int:
    """FLOPs in the convention of TinyNeuralNetwork's pruning tutorial.

    Convolution multiply-accumulates, plus twice the output elements of every batch norm,
    plus ``in_features * out_features`` of every linear layer; nothing else. For torchvision
    mobilenet_v2 at 1x3x224x224 this is 314,130,496.
    """
    total = 0
    for node, attrs in graph.nodes(data=True):
        if attrs["kind"] != "call":
            continue
        if attrs["op"] in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                           "conv_transpose3d"):
            total += node_macs(graph, node)
        elif attrs["op"] == "batch_norm":
            total += 2 * math.prod(attrs["out_shapes"][0])
        elif attrs["op"] == "linear":
            total += math.prod(_shape(graph, _arg(attrs, 1, "weight")))
    return total
