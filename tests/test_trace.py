"""The tracer records what really ran, with real shapes, and leaves the model untouched."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruneconf import TraceError, trace


def calls(graph, op=None):
    nodes = sorted((n for n, a in graph.nodes(data=True) if a["kind"] == "call"),
                   key=lambda n: graph.nodes[n]["order"])
    return [n for n in nodes if op is None or graph.nodes[n]["op"] == op]


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent: only the taken branch is recorded
            return self.a(x)
        return self.b(x)


def test_records_the_branch_taken():
    model = Branchy()
    positive = trace(model, torch.ones(1, 3, 4, 4))
    negative = trace(model, -torch.ones(1, 3, 4, 4))
    assert "a" in positive and "b" not in positive
    assert "b" in negative and "a" not in negative


class InPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        y += 1
        y.relu_()
        y[:, :2] = 0
        z = y.mul_(2)
        return z


def test_inplace_ops_chain_through_the_same_tensor():
    g = trace(InPlace(), torch.randn(1, 3, 4, 4))
    ops = [g.nodes[n]["op"] for n in calls(g)]
    assert ops == ["conv2d", "add", "relu", "setitem", "mul"]
    chain = calls(g)
    for producer, consumer in zip(chain, chain[1:]):  # each in-place op reads the previous one
        assert g.has_edge(producer, consumer)
    assert all(g.nodes[n]["inplace"] for n in chain[1:])
    assert g.has_edge(chain[-1], "output")


class Methods(nn.Module):
    def forward(self, x):
        y = x.view(x.size(0), -1).t()
        return y[1:, None].sum(0)


def test_tensor_methods_and_getitem_are_recorded_with_shapes():
    g = trace(Methods(), torch.randn(2, 3, 4))
    ops = [(g.nodes[n]["op"], g.nodes[n]["out_shapes"][0]) for n in calls(g)]
    assert ops == [("view", (2, 12)), ("t", (12, 2)), ("getitem", (11, 1, 2)), ("sum", (1, 2))]


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(self.conv(x))


def test_module_called_twice_gets_two_nodes_and_one_weight():
    g = trace(Shared(), torch.randn(1, 4, 5, 5))
    assert calls(g, "conv2d") == ["conv", "conv#1"]
    assert set(g.successors("conv.weight")) == {"conv", "conv#1"}


class MultiIO(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(3, 5)
        self.l2 = nn.Linear(4, 5)

    def forward(self, a, b, scale=1.0):
        return {"sum": self.l1(a) + self.l2(b), "pair": (self.l1(a), b * scale)}


@pytest.mark.parametrize("as_dict", [False, True])
def test_several_inputs_and_nested_outputs(as_dict):
    a, b = torch.randn(2, 3), torch.randn(2, 4)
    example = {"a": a, "b": b} if as_dict else (a, b)
    g = trace(MultiIO(), example)
    assert {"input_0", "input_1"} <= set(g)
    assert g.nodes["input_1"]["out_shapes"] == [(2, 4)]
    outputs = set(g.predecessors(g.graph["output"]))
    assert outputs == {"add", "l1#1", "mul"}


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3, 3, 3))
        self.register_buffer("scale", torch.ones(1, 6, 1, 1))

    def forward(self, x):
        return F.conv2d(x, self.w, padding=1) * self.scale


def test_functional_ops_with_parameters_and_buffers():
    g = trace(Functional(), torch.randn(1, 3, 8, 8))
    assert g.nodes["w"]["kind"] == "param" and g.nodes["scale"]["kind"] == "buffer"
    conv = calls(g, "conv2d")[0]
    assert g.has_edge("w", conv) and g.has_edge("scale", calls(g, "mul")[0])


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_works_with_and_without_autograd(context):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    with context():
        g = trace(model, torch.randn(2, 3, 8, 8))
    assert calls(g) == ["0", "1", "2"]


def test_model_left_exactly_as_found():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.ReLU())
    model.train()
    model[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    rng = torch.random.get_rng_state()
    trace(model, x)  # dropout in train mode draws random numbers
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[1].weight.requires_grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # running stats and num_batches_tracked restored
    assert torch.equal(torch.random.get_rng_state(), rng)
    model.eval()
    trace(model, torch.randn(2, 3, 8, 8))
    assert not model.training


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(3, 3))

    def forward(self, x):
        return self.body(x)


def test_failure_names_the_module_and_restores_state():
    model = Broken().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TraceError, match=r"module 'body\.2' \(Linear\)"):
        trace(model, torch.randn(2, 3, 5, 5))
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_unsupported_example_inputs_are_refused():
    with pytest.raises(TraceError, match="tensor, a tuple or a dict"):
        trace(nn.Identity(), [1, 2, 3].__iter__())
