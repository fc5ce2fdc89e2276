"""Recurrent layers: ``lstm``, ``gru``, ``rnn_tanh``/``rnn_relu``, their ``*_cell`` ops, and
the packing ops of variable-length sequences around them.

A hidden unit ``j`` owns one row per gate (rows ``j, H+j, 2H+j, 3H+j`` of an LSTM's
``weight_ih``/``weight_hh``/biases; three gates for a GRU, one for a plain RNN) and is read
back through column ``j`` of ``weight_hh`` (or of ``weight_hr`` with ``proj_size``). The
gate rows are the group's sources, the biases follow them, the columns are consumers.

``nn.LSTM`` has one ``hidden_size`` (and one ``proj_size``) for every layer and direction,
so hidden unit ``j`` is one channel across all layers and both directions: the sizes stay
equal by construction and the layer can be rebuilt with the new sizes. With ``proj_size``
the projected dim (``weight_hr`` rows, ``weight_hh`` columns, the output) is a second group.
A layer's output concatenates the directions, so output feature ``j`` and ``R+j`` are both
channel ``j`` (``R`` = projected or hidden size); the next layer's ``weight_ih`` columns and
the consumer after the op read them. The first layer's ``weight_ih`` columns consume the
input's features, which therefore follow their producer.

Why pruning is exact: the masked model zeroes unit ``j``'s gate rows and biases and every
column that reads it (``weight_hh``, ``weight_hr``, the next layer's ``weight_ih``, the
consumer after the op), so nothing the unit computes reaches another unit or the output; and
its state stays zero anyway when it starts at zero: LSTM ``i=f=o=σ(0)``, ``g=tanh(0)=0`` so
``c`` and ``h`` stay 0; GRU ``n=tanh(0)=0`` so ``h'=z·h`` stays 0; RNN ``tanh(0)=relu(0)=0``.
Applied, the unit is simply gone. The initial state must shrink with the units: the zero
state the module makes itself follows ``hidden_size``; a state passed in is coupled with the
units, so one from a model input blocks them and one from a layer makes that layer's rows
part of the group. ``h_n``/``c_n`` carry the unit channels on their last dim; the output
rule blocks them if they reach the model output. Sequence and batch positions are not
channels: labels on them are blocked, since the recurrence mixes time steps.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ...trace.refs import Ref
from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register, unsupported
from .common import block_dims, channel_labels

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
MODULES = ("LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell")


@dataclasses.dataclass
class Weights:
    """The parameters of one layer and direction, as ``torch.lstm`` & co. take them."""

    w_ih: Ref
    w_hh: Ref
    biases: tuple[Ref, ...] = ()
    w_hr: Ref | None = None

    def params(self) -> list[Ref]:
        return [self.w_ih, self.w_hh, *self.biases, *([self.w_hr] if self.w_hr is not None else [])]


@dataclasses.dataclass
class RecurrentCall:
    """The arguments of a whole-sequence op: ``(input[, batch_sizes], hx, weights, has_biases,
    num_layers, dropout, train, bidirectional[, batch_first])``."""

    x: Ref
    states: list  # (h0,) or (h0, c0)
    layers: list[Weights]  # layer-major, forward direction first
    directions: int

    @classmethod
    def parse(cls, args: tuple) -> "RecurrentCall":
        shift = 1 if isinstance(args[3], (list, tuple)) else 0  # a packed sequence adds batch_sizes
        hx, flat, has_biases, num_layers = args[1 + shift:5 + shift]
        directions = 2 if args[7 + shift] else 1
        states = list(hx) if isinstance(hx, (list, tuple)) else [hx]
        return cls(args[0], states, _split(list(flat), has_biases, num_layers * directions), directions)


def _split(flat: list, has_biases: bool, count: int) -> list[Weights]:
    """Split the flat weight list into ``count`` layer-directions (stride 2, 3, 4 or 5)."""
    stride = len(flat) // count
    if stride * count != len(flat) or stride - 2 * has_biases not in (2, 3):
        raise ValueError(f"{len(flat)} weights for {count} layer-directions")
    out = []
    for k in range(count):
        chunk = flat[k * stride:(k + 1) * stride]
        biases = tuple(chunk[2:4]) if has_biases else ()
        out.append(Weights(chunk[0], chunk[1], biases, chunk[-1] if stride in (3, 5) else None))
    return out


def _own_zero_state(ctx: RuleContext, ref: Ref) -> bool:
    """A zero state the recurrent module built itself from its sizes: it follows a resize."""
    node = ctx.graph.nodes[ref.node]
    return (node["kind"] == "call" and node["op"] == "zeros" and node["module_type"] in MODULES
            and node["module"] == ctx.attrs["module"] and node["module_type"] == ctx.attrs["module_type"])


def _couple_states(ctx: RuleContext, states: list, labels: list[np.ndarray]) -> None:
    """An initial state passed in has the unit (or projection) channels on its last dim."""
    for state, lab in zip(states, labels):
        if isinstance(state, Ref) and not _own_zero_state(ctx, state):
            ctx.union(channel_labels(ctx, state, len(ctx.shape(state)) - 1), lab)


def _couple_layer(ctx: RuleContext, w: Weights, gates: int, units: np.ndarray,
                  recurrent: np.ndarray) -> np.ndarray:
    """Gate rows and biases are unit channels; ``weight_hh`` columns read ``recurrent``.

    Returns the labels of the ``weight_ih`` columns, for the caller to couple with the input.
    """
    for param, role in [(w.w_ih, SOURCE), (w.w_hh, SOURCE)] + [(b, FOLLOWER) for b in w.biases]:
        ctx.union(ctx.role(param, 0, role).reshape(gates, -1), units)
    ctx.union(ctx.role(w.w_hh, 1, CONSUMER), recurrent)
    if w.w_hr is not None:
        ctx.union(ctx.role(w.w_hr, 1, CONSUMER), units)
        ctx.union(ctx.role(w.w_hr, 0, SOURCE), recurrent)
    return ctx.role(w.w_ih, 1, CONSUMER)


def _block_positions(ctx: RuleContext, x: Ref) -> None:
    nd = len(ctx.shape(x))
    block_dims(ctx, ctx.labels(x), range(nd - 1), f"sequence or batch position of '{ctx.op}'")


def _params_or_block(ctx: RuleContext, refs: list) -> bool:
    if all(ctx.is_param(r) for r in refs):
        return True
    unsupported(ctx, f"'{ctx.op}' with weights that are not parameters")
    return False


@register("lstm", "gru", "rnn_tanh", "rnn_relu")
def recurrent(ctx: RuleContext) -> None:
    """Whole-sequence ops; the outputs are ``(output, h_n[, c_n])``."""
    call = RecurrentCall.parse(ctx.args)
    if not _params_or_block(ctx, [p for w in call.layers for p in w.params()]):
        return
    gates = GATES[ctx.op]
    first = call.layers[0]
    units = ctx.space.new(ctx.shape(first.w_hh)[0] // gates)
    projected = ctx.space.new(ctx.shape(first.w_hr)[0]) if first.w_hr is not None else units
    layer_out = np.concatenate([projected] * call.directions)
    x_features = channel_labels(ctx, call.x, len(ctx.shape(call.x)) - 1)
    for k, w in enumerate(call.layers):
        columns = _couple_layer(ctx, w, gates, units, projected)
        ctx.union(columns, x_features if k < call.directions else layer_out)
    _block_positions(ctx, call.x)
    _couple_states(ctx, call.states, [projected, units])
    ctx.set_out({len(ctx.out_shapes[0]) - 1: layer_out}, 0)
    for i, lab in enumerate([projected, units][:len(ctx.out_shapes) - 1], start=1):
        ctx.set_out({len(ctx.out_shapes[i]) - 1: lab}, i)


@register("lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell")
def recurrent_cell(ctx: RuleContext) -> None:
    """One time step: ``(input, hx, w_ih, w_hh[, b_ih, b_hh])``; the units as in :func:`recurrent`."""
    x, hx, *params = ctx.args
    params = [p for p in params if p is not None]
    if not _params_or_block(ctx, params):
        return
    w = Weights(params[0], params[1], tuple(params[2:4]))
    units = ctx.space.new(ctx.shape(w.w_hh)[1])
    ctx.union(_couple_layer(ctx, w, GATES[ctx.op.removesuffix("_cell")], units, units),
              channel_labels(ctx, x, len(ctx.shape(x)) - 1))
    _block_positions(ctx, x)
    _couple_states(ctx, list(hx) if isinstance(hx, (list, tuple)) else [hx], [units, units])
    for i, shape in enumerate(ctx.out_shapes):
        ctx.set_out({len(shape) - 1: units}, i)


@register("_pack_padded_sequence")
def pack_padded_sequence(ctx: RuleContext) -> None:
    """``(input, lengths, batch_first)`` → ``(data, batch_sizes)``: time and batch merge into
    dim 0 of ``data``; the feature dims keep their channels, one dim to the left."""
    x = ctx.arg(0, "input")
    labels = ctx.labels(x)
    block_dims(ctx, labels, (0, 1), "sequence or batch position packed by 'pack_padded_sequence'")
    ctx.set_out({d - 1: lab for d, lab in labels.items() if d >= 2}, 0)
    ctx.set_out({}, 1)


@register("_pad_packed_sequence")
def pad_packed_sequence(ctx: RuleContext) -> None:
    """``(data, batch_sizes, batch_first, padding_value, total_length)`` → ``(padded, lengths)``.

    Padding fills every channel of a padded position, a pruned one too; the consumer's
    columns of pruned channels are zero, so it does not matter."""
    data = ctx.arg(0, "data")
    labels = ctx.labels(data)
    block_dims(ctx, labels, (0,), "packed sequence position of 'pad_packed_sequence'")
    ctx.set_out({d + 1: lab for d, lab in labels.items() if d >= 1}, 0)
    ctx.set_out({}, 1)
