"""Recurrent layers: hidden units pruned with their gate rows, exactly, in every layout."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from helpers import analyse, assert_no_influence
from pruneconf import Pruner, find_groups, trace
from pruneconf.analysis import group_costs, total_macs
from pruneconf.apply import shrink

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")


class Seq(nn.Module):
    """Linear → recurrent layer → Linear on the last time step."""

    def __init__(self, rnn: nn.RNNBase, features: int = 40):
        super().__init__()
        self.inp = nn.Linear(features, rnn.input_size)
        self.rnn = rnn
        width = (getattr(rnn, "proj_size", 0) or rnn.hidden_size) * (2 if rnn.bidirectional else 1)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        y, _ = self.rnn(self.inp(x))
        return self.head(y[:, -1] if self.rnn.batch_first else y[-1])


class Text(nn.Module):
    """Embedding → LSTM → Linear on the last hidden state ``h_n[-1]``."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.rnn = nn.LSTM(32, 48, batch_first=True)
        self.head = nn.Linear(48, 4)

    def forward(self, tokens):
        _, (h, _) = self.rnn(self.emb(tokens))
        return self.head(h[-1])


class InitialState(nn.Module):
    """The LSTM's initial state comes from layers: their rows join the hidden-unit group."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.init_h, self.init_c = nn.Linear(12, 24), nn.Linear(12, 24)
        self.rnn = nn.LSTM(16, 24, batch_first=True)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        summary = x.mean(1)
        state = (self.init_h(summary).unsqueeze(0), self.init_c(summary).unsqueeze(0))
        y, _ = self.rnn(self.inp(x), state)
        return self.head(y[:, -1])


class Packed(nn.Module):
    """Variable-length sequences through ``pack_padded_sequence``, classified from ``h_n``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(12, 16)
        self.rnn = nn.GRU(16, 24, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(48, 3)

    def forward(self, x):
        lengths = [x.shape[1] - k for k in range(x.shape[0])]
        y, h = self.rnn(nn.utils.rnn.pack_padded_sequence(self.inp(x), lengths, batch_first=True))
        padded, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True)
        return self.head(padded).mean(1) + self.head(torch.cat([h[-2], h[-1]], 1))


class CellLoop(nn.Module):
    """A cell stepped over time in Python, as in a decoder."""

    def __init__(self, cell: nn.RNNCellBase):
        super().__init__()
        self.inp = nn.Linear(12, cell.input_size)
        self.rnn = cell
        self.head = nn.Linear(cell.hidden_size, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.rnn(self.inp(x[:, t]), state)
        return self.head(state[0] if isinstance(state, tuple) else state)


MODELS = {  # name: (model, example input, hidden size, projected size)
    # the must-show model: 2-layer bidirectional LSTM, batch first, dropout between layers
    "lstm-2layer-bidir": (lambda: Seq(nn.LSTM(64, 96, num_layers=2, bidirectional=True, batch_first=True,
                                              dropout=0.1)), lambda: torch.randn(2, 6, 40), 96, None),
    "lstm-proj": (lambda: Seq(nn.LSTM(16, 24, num_layers=2, proj_size=8, bidirectional=True)),
                  lambda: torch.randn(5, 2, 40), 24, 8),
    "lstm-unbatched": (lambda: Seq(nn.LSTM(16, 24)), lambda: torch.randn(5, 40), 24, None),
    "gru-2layer-bidir": (lambda: Seq(nn.GRU(16, 24, num_layers=2, bidirectional=True)),
                         lambda: torch.randn(5, 2, 40), 24, None),
    "rnn-tanh": (lambda: Seq(nn.RNN(16, 24, num_layers=2, batch_first=True)), lambda: torch.randn(2, 5, 40), 24, None),
    "rnn-relu": (lambda: Seq(nn.RNN(16, 24, nonlinearity="relu", bidirectional=True, bias=False)),
                 lambda: torch.randn(5, 2, 40), 24, None),
    "text-lstm": (Text, lambda: torch.randint(0, 50, (2, 7)), 48, None),
    "gru-packed": (Packed, lambda: torch.randn(3, 5, 12), 24, None),
    "initial-state": (InitialState, lambda: torch.randn(2, 5, 12), 24, None),
    "lstm-cell": (lambda: CellLoop(nn.LSTMCell(16, 24)), lambda: torch.randn(2, 4, 12), 24, None),
    "gru-cell": (lambda: CellLoop(nn.GRUCell(16, 24)), lambda: torch.randn(2, 4, 12), 24, None),
    "rnn-cell": (lambda: CellLoop(nn.RNNCell(16, 24, nonlinearity="relu")), lambda: torch.randn(2, 4, 12), 24, None),
}


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def rebuilt(module: nn.Module) -> nn.Module:
    """A fresh module built from ``module``'s size attributes, loaded with its state_dict."""
    keys = ["bias"]
    if isinstance(module, nn.RNNBase):
        keys += ["num_layers", "batch_first", "dropout", "bidirectional"]
    if isinstance(module, nn.LSTM):
        keys.append("proj_size")
    if isinstance(module, (nn.RNN, nn.RNNCell)):
        keys.append("nonlinearity")
    fresh = type(module)(module.input_size, module.hidden_size, **{k: getattr(module, k) for k in keys})
    fresh.load_state_dict(module.state_dict())
    return fresh


@pytest.mark.parametrize("name", list(MODELS))
def test_sparsity_zero_changes_nothing(name):
    make, example, _, _ = MODELS[name]
    model, x = make(), example()
    expected = outputs(copy.deepcopy(model), x)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    Pruner(model, x, {"sparsity": 0.0}).apply_masks()
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert torch.equal(outputs(model, x), expected)


@pytest.mark.parametrize("name", list(MODELS))
def test_pruned_exactly_with_fewer_macs(name):
    make, example, hidden, projected = MODELS[name]
    model, x = make(), example()
    groups = analyse(model, x)
    for group in groups.groups_of_layer("rnn"):  # input side, hidden units (and projections)
        assert group.prunable, (group.center, group.reasons)
    assert assert_no_influence(model, x, groups) > 0
    macs = total_macs(trace(model, x))
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.register_masks()
    masked = outputs(model, x)
    pruner.apply_masks()  # raises unless the shrunk model reproduces the masked one
    pruned = outputs(model, x)
    torch.testing.assert_close(pruned, masked, rtol=0, atol=1e-5)
    assert model.rnn.hidden_size == hidden // 2
    if projected:
        assert model.rnn.proj_size == projected // 2
    assert total_macs(trace(model, x)) < macs / 2
    model.rnn = rebuilt(model.rnn)  # the shrunk layer is an ordinary layer of the new sizes
    torch.testing.assert_close(outputs(model, x), pruned, rtol=0, atol=0)


def test_must_show_model_figures():
    """2-layer bidirectional LSTM (64→96) between two Linears, batch 2 × 6 steps, 50%."""
    make, example, _, _ = MODELS["lstm-2layer-bidir"]
    model, x = make(), example()
    assert model.training  # traced with dropout between the layers active; verified in eval mode
    before = total_macs(trace(model, x))
    Pruner(model, x, {"sparsity": 0.5}).apply_masks()
    assert model.training
    # 12 steps·(2 dirs·(4·96·(64+96) + 4·96·(192+96))) + 12·40·64 + 2·192·10, then with 48 units and 32 inputs
    assert (before, total_macs(trace(model, x))) == (4_163_328, 1_049_472)
    assert (model.rnn.input_size, model.rnn.hidden_size, model.head.in_features) == (32, 48, 96)


def test_group_costs_split_the_layer_by_weight():
    """The hidden units touch every LSTM weight and the head: all MACs but the input layer's;
    the input group owns the input layer and the first LSTM layer's ``weight_ih`` products."""
    make, example, _, _ = MODELS["lstm-2layer-bidir"]
    model, x = make(), example()
    graph = trace(model, x)
    costs = group_costs(find_groups(graph))
    inp_macs = 12 * 40 * 64
    assert costs["rnn"].macs == total_macs(graph) - inp_macs == 4_132_608
    assert costs["inp"].macs == inp_macs + 12 * 2 * 4 * 96 * 64
    assert costs["rnn"].params == sum(p.numel() for p in model.rnn.parameters()) + model.head.weight.numel()


@pytest.mark.parametrize("kind, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_known_groups_of_one_layer(kind, gates):
    model = Seq(kind(8, 5), features=6)
    groups = analyse(model, torch.randn(4, 2, 6))
    inp, rnn = groups["inp"], groups["rnn"]
    assert (inp.channels, rnn.channels) == (8, 5)
    assert {(m.param, m.dim, m.role) for m in inp.members} == {
        ("inp.weight", 0, "source"), ("inp.bias", 0, "follower"), ("rnn.weight_ih_l0", 1, "consumer")}
    assert {(m.param, m.dim, m.role) for m in rnn.members} == {
        ("rnn.weight_ih_l0", 0, "source"), ("rnn.weight_hh_l0", 0, "source"), ("rnn.bias_ih_l0", 0, "follower"),
        ("rnn.bias_hh_l0", 0, "follower"), ("rnn.weight_hh_l0", 1, "consumer"), ("head.weight", 1, "consumer")}
    rows = next(m for m in rnn.members if m.param == "rnn.weight_hh_l0" and m.dim == 0)
    np.testing.assert_array_equal(rows.channels, np.tile(np.arange(5), gates))  # unit j: row j of every gate


def test_bidirectional_and_projection_groups():
    """Unit j is one channel in every layer and direction; projections are a group of their own."""
    model = Seq(nn.LSTM(8, 6, num_layers=2, bidirectional=True, proj_size=3), features=6)
    groups = analyse(model, torch.randn(4, 2, 6))
    units, proj = groups["rnn"], groups["rnn.weight_hr_l0"]
    assert (units.channels, proj.channels) == (6, 3) and units.prunable and proj.prunable
    next_input = next(m for m in proj.members if m.param == "rnn.weight_ih_l1_reverse" and m.dim == 1)
    np.testing.assert_array_equal(next_input.channels, [0, 1, 2, 0, 1, 2])  # [forward | reverse] outputs
    assert {m.param for m in proj.members if m.role == "source"} == {
        f"rnn.weight_hr_l{k}{d}" for k in (0, 1) for d in ("", "_reverse")}


class StateIn(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(6, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x, h0):
        return self.head(self.rnn(x, h0)[0])


def test_state_from_a_model_input_blocks_the_units():
    """The caller's h0 has hidden_size channels: the units cannot shrink under it."""
    groups = analyse(StateIn(), torch.randn(5, 2, 6), torch.randn(1, 2, 8))
    assert not groups["rnn"].prunable
    assert any("fed by a model input" in r for r in groups["rnn"].reasons), groups["rnn"].reasons


class ReturnsState(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(10, 16)
        self.rnn = nn.LSTM(16, 12, batch_first=True)

    def forward(self, x):
        return self.rnn(self.inp(x))  # (output, (h_n, c_n))


def test_outputs_and_states_reaching_the_model_output_keep_the_units():
    model, x = ReturnsState(), torch.randn(2, 5, 10)
    groups = analyse(model, x)
    assert any("reaches the model output" in r for r in groups["rnn"].reasons)
    Pruner(model, x, {"sparsity": 0.5}).apply_masks()  # the input side still follows its producer
    assert (model.rnn.input_size, model.rnn.hidden_size) == (8, 12)


def test_undo_restores_the_layer():
    make, example, _, _ = MODELS["lstm-proj"]
    model, x = make(), example()
    expected = outputs(model, x)
    done = shrink(model, Pruner(model, x, {"sparsity": 0.5}).plan())
    assert (model.rnn.hidden_size, model.rnn.proj_size) == (12, 4)
    done.undo()
    rnn = model.rnn
    assert (rnn.input_size, rnn.hidden_size, rnn.proj_size) == (16, 24, 8)
    assert all(w is getattr(rnn, n) for w, n in zip(rnn._flat_weights, rnn._flat_weights_names))
    torch.testing.assert_close(outputs(model, x), expected, rtol=0, atol=0)


def test_projection_not_below_hidden_size_is_warned(caplog):
    """nn.LSTM runs with proj_size >= hidden_size but cannot be constructed so: say it."""
    model, x = Seq(nn.LSTM(16, 24, proj_size=8)), torch.randn(5, 2, 40)
    Pruner(model, x, {"sparsity": 0.0, "groups": {"rnn": 0.8}}).apply_masks()
    assert (model.rnn.hidden_size, model.rnn.proj_size) == (5, 8)
    assert "proj_size 8 >= hidden_size 5" in caplog.text
