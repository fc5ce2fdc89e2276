"""Multiply-accumulates (MACs) and parameter counts read off the traced graph.

Convention ("standard MACs"): convolutions ``out_elements * in_channels / groups * kernel``,
linear layers and matrix products ``out_elements * reduced_dim`` (``einsum``: the product of
its subscripts' sizes), attention's projections and its two matrix products, recurrent
layers their gate and projection products per time step; biases, norms, activations, gate
math and pooling count nothing. This is the convention of fvcore/ptflops-style counters for
the layers that dominate cost.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import networkx as nx

from .._registry import Registry
from ..groups.find import ChannelGroups
from ..groups.rules.recurrent import RecurrentCall

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


@_macs("addmm", "baddbmm")
def _addmm(attrs: dict, graph: nx.DiGraph) -> int:
    """``bias + a @ b``: the product's MACs (the added term counts nothing, like a bias)."""
    a = _shape(graph, attrs["args"][1])
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
    """Query/key/value and output projections plus the two attention products.

    Sizes come from the weights, so a pruned inner (head) dimension counts as such.
    Inputs are sequence-first here: ``(length, batch, dim)`` or unbatched ``(length, dim)``.
    """
    q, k = _shape(graph, attrs["args"][0]), _shape(graph, attrs["args"][1])
    length, source = q[0], k[0]
    batch = q[1] if len(q) == 3 else 1
    if _arg(attrs, 17, "use_separate_proj_weight", False):
        projections = [_shape(graph, _arg(attrs, i, name)) for i, name in
                       ((18, "q_proj_weight"), (19, "k_proj_weight"), (20, "v_proj_weight"))]
    else:
        rows, cols = _shape(graph, _arg(attrs, 5, "in_proj_weight"))
        projections = [(rows // 3, cols)] * 3
    inner = projections[0][0]
    out_rows = _shape(graph, _arg(attrs, 11, "out_proj_weight"))[0]
    per_batch = (length * math.prod(projections[0]) + source * (math.prod(projections[1]) + math.prod(projections[2]))
                 + 2 * length * source * inner + length * out_rows * inner)
    return batch * per_batch


@_macs("scaled_dot_product_attention")
def _sdpa(attrs: dict, graph: nx.DiGraph) -> int:
    q, v = _shape(graph, attrs["args"][0]), _shape(graph, attrs["args"][2])
    return math.prod(q) * v[-2] + math.prod(q[:-1]) * v[-2] * v[-1]


@_macs("lstm", "gru", "rnn_tanh", "rnn_relu")
def _recurrent(attrs: dict, graph: nx.DiGraph) -> int:
    """Per time step, layer and direction: the gate products ``gates·H·(in + R)`` plus the
    projection ``H·R`` with ``proj_size`` (``R`` = projected or hidden size); gate math is free."""
    call = RecurrentCall.parse(attrs["args"])
    steps = math.prod(_shape(graph, call.x)[:-1])  # (T, B), (B, T), (T,) or packed (sum of lengths,)
    projections = sum(math.prod(_shape(graph, w.w_hr)) for w in call.layers if w.w_hr is not None)
    return steps * (sum(_gate_macs(graph, w.w_ih, w.w_hh) for w in call.layers) + projections)


@_macs("lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")
def _recurrent_cell(attrs: dict, graph: nx.DiGraph) -> int:
    args = attrs["args"]
    return math.prod(_shape(graph, args[0])[:-1]) * _gate_macs(graph, args[2], args[3])


def _gate_macs(graph: nx.DiGraph, w_ih, w_hh) -> int:
    """One step of the gate pre-activations: ``W_ih·x + W_hh·h``."""
    ih, hh = _shape(graph, w_ih), _shape(graph, w_hh)
    return ih[0] * (ih[1] + hh[1])


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


def _param_macs(graph: nx.DiGraph) -> dict[str, float]:
    """MACs of the ops that use each weight matrix (summed over calls when shared).

    An op with several weight matrices (an LSTM's ``weight_ih``/``weight_hh`` of every layer,
    attention's projections) splits its MACs among them by size, which is exact for
    recurrent layers; biases and other vectors cost nothing.
    """
    out: dict[str, float] = {}
    for node in graph:
        macs = node_macs(graph, node)
        if not macs:
            continue
        sizes = {graph.nodes[p]["target"]: math.prod(graph.nodes[p]["out_shapes"][0])
                 for p in graph.predecessors(node)
                 if graph.nodes[p]["kind"] == "param" and len(graph.nodes[p]["out_shapes"][0]) >= 2}
        total = sum(sizes.values())
        for target, size in sizes.items():
            out[target] = out.get(target, 0) + macs * size / total
    return out


def group_costs(groups: ChannelGroups) -> dict[str, GroupCost]:
    """Per group center: the MACs and parameters its channels touch.

    A parameter contributes the fraction of its entries (and of its op's MACs) that lie on
    the group's channels; where the group spans two of its dims (an LSTM's ``weight_hh``
    rows and columns) an entry counts once. Shares of different groups overlap: a conv
    counts for the group of its output channels and for the groups of its input channels.
    """
    graph = groups.graph
    param_macs = _param_macs(graph)
    shapes = graph.graph["params"]
    out = {}
    for g in groups:
        untouched: dict[str, float] = {}  # per parameter: the fraction of entries off the group
        for m in g.members:
            share = m.size / max(m.length, 1)
            if m.slice is None:
                untouched[m.param] = untouched.get(m.param, 1.0) * (1 - share)
            else:  # one expert's slice of a stacked parameter: the experts' shares add up
                untouched[m.param] = untouched.get(m.param, 1.0) - share / shapes[m.param][0]
        params = sum((1 - rest) * math.prod(shapes[name]) for name, rest in untouched.items())
        macs = sum((1 - rest) * param_macs.get(name, 0) for name, rest in untouched.items())
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
