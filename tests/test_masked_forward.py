"""The dry run's masked forward: what the model computes with its masks registered, with the
weights left alone. Layers whose weight outweighs their activations are masked on their
activations instead of a masked copy of the weight."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pruneconf import Pruner
from pruneconf.masks import register_masks
from pruneconf.masks.transient import activation_mask, masked_forward


class Wide(nn.Module):
    """Weights larger than activations at this input: the conv and both linears take the
    activation path; the grouped conv's inputs cannot (each group reads its own)."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=groups)
        self.act = nn.GELU()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 5)

    def forward(self, x):
        y = self.grouped(self.act(self.conv(x)) + 0.5).mean((2, 3))
        return self.fc2(torch.sigmoid(self.fc1(y.unsqueeze(1)))).squeeze(1)  # a 3-D input to the linears


def _masked_and_registered(model: nn.Module, x: torch.Tensor):
    plan = Pruner(model, x, {"sparsity": 0.5}).plan()
    pointers = {}

    def note(name):
        def hook(module, args, out):
            pointers.setdefault(name, module.weight.data_ptr())
        return hook

    hooks = [getattr(model, n).register_forward_hook(note(n)) for n in ("conv", "grouped", "fc1", "fc2")]
    with masked_forward(model, plan):
        got = model(x)
    for hook in hooks:
        hook.remove()
    twin = copy.deepcopy(model)
    register_masks(twin, plan)
    return got, twin(x), pointers, plan


@pytest.mark.parametrize("groups", [1, 4])
def test_activation_masks_compute_what_the_masked_weights_compute(groups):
    torch.manual_seed(0)
    model = Wide(groups).eval()
    x = torch.randn(1, 16, 4, 4)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    got, expected, pointers, plan = _masked_and_registered(model, x)
    assert {"conv", "fc1"} <= set(plan.kept)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    # no copy of a weight that the activation path covers; the grouped conv's is copied only with groups
    assert pointers["conv"] == model.conv.weight.data_ptr() and pointers["fc1"] == model.fc1.weight.data_ptr()
    assert (pointers["grouped"] == model.grouped.weight.data_ptr()) == (groups == 1)


def test_layers_that_activation_masks_cannot_stand_for_are_refused():
    conv, rows, columns = nn.Conv2d(4, 6, 1, groups=2), torch.ones(6, 1, 1, 1), torch.ones(1, 2, 1, 1)
    bias_rows = torch.ones(6)
    assert activation_mask(conv, {id(conv.weight): [rows], id(conv.bias): [bias_rows]}) is not None
    assert activation_mask(conv, {id(conv.weight): [columns]}) is None  # a grouped conv's columns
    assert activation_mask(conv, {id(conv.weight): [rows]}) is None  # the bias would stay in pruned channels
    other = bias_rows.clone()
    other[0] = 0
    assert activation_mask(conv, {id(conv.weight): [rows], id(conv.bias): [other]}) is None
    assert activation_mask(conv, {id(conv.weight): [torch.ones(6, 2, 1, 1)]}) is None  # per-row columns

    class Custom(nn.Linear):
        pass

    custom = Custom(3, 2, bias=False)
    assert activation_mask(custom, {id(custom.weight): [torch.ones(2, 1)]}) is None  # may read its weight otherwise
    assert activation_mask(nn.LayerNorm(3), {}) is None and activation_mask(nn.ReLU(), {}) is None


class KeywordInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(24, 48)
        self.fc2 = nn.Linear(48, 3)

    def forward(self, x):
        return self.fc2(input=torch.tanh(self.fc1(input=x)) + 1.0)


def test_a_layer_called_with_its_input_by_keyword_is_masked_too():
    torch.manual_seed(0)
    model = KeywordInput().eval()
    x = torch.randn(2, 24)
    plan = Pruner(model, x, {"sparsity": 0.5}).plan()
    assert activation_mask(model.fc2, {id(model.fc2.weight): [torch.ones(1, 48)]}) is not None
    with masked_forward(model, plan):
        got = model(x)
    twin = copy.deepcopy(model)
    register_masks(twin, plan)
    torch.testing.assert_close(got, twin(x), atol=0, rtol=0)
