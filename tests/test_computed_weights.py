"""Weights computed in ``forward()`` from parameters, row by row: weight norm (both forms),
spectral norm and ``W + B @ A`` low-rank merges prune exactly; other parametrizations keep
their layer whole with a reason that says how to take them off."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from helpers import analyse, assert_no_influence, left_whole, prune_exactly
from pruneconf import Pruner

X = torch.randn(2, 3, 6, 6)


def between(middle: nn.Module, linear: bool = False) -> nn.Sequential:
    """``middle`` (8 channels in and out) between a prunable producer and a whole head."""
    if linear:
        return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), middle, nn.ReLU(), nn.Linear(8, 2))
    return nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), middle, nn.ReLU(), nn.Conv2d(8, 2, 1))


def legacy_weight_norm(layer: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # deprecated in favour of the parametrization, still used
        warnings.simplefilter("ignore", FutureWarning)
        return nn.utils.weight_norm(layer)


class LoRALinear(nn.Module):
    def __init__(self, features: int, rank: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, features) / features ** 0.5)
        self.bias = nn.Parameter(torch.randn(features))
        self.lora_A = nn.Parameter(torch.randn(rank, features))
        self.lora_B = nn.Parameter(torch.randn(features, rank))
        self.scaling = 0.5

    def forward(self, x):
        return F.linear(x, self.weight + (self.lora_B @ self.lora_A) * self.scaling, self.bias)


class LoRAConv(nn.Module):
    """The conv analogue: ``B`` has a row per row of the weight (output channels; input
    channels for a transposed conv), ``A`` holds each column's taps together; the product
    is viewed as the weight."""

    def __init__(self, channels: int, rank: int = 2, k: int = 3, transposed: bool = False) -> None:
        super().__init__()
        self.conv = F.conv_transpose2d if transposed else F.conv2d
        self.weight = nn.Parameter(torch.randn(channels, channels, k, k) / (channels * k * k) ** 0.5)
        self.lora_A = nn.Parameter(torch.randn(rank, channels * k * k))
        self.lora_B = nn.Parameter(torch.randn(channels, rank))
        self.scaling = 2.0

    def forward(self, x):
        return self.conv(x, self.weight + self.scaling * (self.lora_B @ self.lora_A).view(self.weight.shape), padding=1)


CASES = {
    "weight_norm conv": (lambda: between(parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1))), X),
    "weight_norm linear": (lambda: between(parametrizations.weight_norm(nn.Linear(8, 8)), True), X[:, :, 0, 0]),
    "weight_norm linear over rows": (lambda: between(parametrizations.weight_norm(nn.Linear(8, 8), dim=1), True),
                                     X[:, :, 0, 0]),  # one norm per input column: columns kept apart
    "legacy weight_norm conv": (lambda: between(legacy_weight_norm(nn.Conv2d(8, 8, 3, padding=1))), X),
    "spectral_norm conv": (lambda: between(parametrizations.spectral_norm(nn.Conv2d(8, 8, 3, padding=1))), X),
    "spectral_norm linear": (lambda: between(parametrizations.spectral_norm(nn.Linear(8, 8)), True), X[:, :, 0, 0]),
    "weight_norm conv_transpose": (lambda: between(parametrizations.weight_norm(nn.ConvTranspose2d(8, 8, 3, padding=1))),
                                   X),  # one norm per input channel
    "spectral_norm conv_transpose": (lambda: between(parametrizations.spectral_norm(nn.ConvTranspose2d(8, 8, 3, padding=1))),
                                     X),  # u per output channel (dim 1), v per input channel's taps
    "lora linear": (lambda: between(LoRALinear(8), True), X[:, :, 0, 0]),
    "lora conv": (lambda: between(LoRAConv(8)), X),
    "lora conv_transpose": (lambda: between(LoRAConv(8, transposed=True)), X),
}


def train_step(model: nn.Module, x: torch.Tensor) -> None:
    """One SGD step (momentum, weight decay) on the model's output; outputs stay finite."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loss = model(x).square().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("case", list(CASES))
def test_computed_weights_prune_rows_and_columns(case):
    """Both groups around the layer prune (only the head stays whole), masked == applied in
    eval mode, sparsity 0 gives the model back, and the shrunk layer still trains."""
    torch.manual_seed(0)
    build, x = CASES[case]
    model = build()
    groups = analyse(model, x)
    if case.startswith("spectral_norm"):  # sigma sums over pruned channels: exact because they are zero
        assert all("masked_contraction" in g.notes for g in groups.prunable)
    else:
        assert assert_no_influence(model, x, groups) > 0
    pruned = prune_exactly(model, x)
    assert set(left_whole(pruned.pruner)) == {"4"}
    layer = model[2]
    weight = layer.weight
    assert weight.shape[:2] == (4, 4)
    sizes = ("out_features", "in_features") if isinstance(layer, nn.Linear) else ("out_channels", "in_channels")
    if hasattr(layer, sizes[0]):
        assert (getattr(layer, sizes[0]), getattr(layer, sizes[1])) == (4, 4)
    assert parametrize.is_parametrized(layer) == case.startswith(("weight_norm", "spectral_norm"))
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    train_step(model, x)
    assert any(not torch.equal(p, before[n]) for n, p in layer.named_parameters())


def test_weight_norm_shrinks_its_magnitudes_and_the_hook_form_its_attribute():
    torch.manual_seed(0)
    model = between(parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1)))
    prune_exactly(model, X)
    originals = model[2].parametrizations.weight
    assert originals.original0.shape == (4, 1, 1, 1) and originals.original1.shape == (4, 4, 3, 3)
    legacy = between(legacy_weight_norm(nn.Conv2d(8, 8, 3, padding=1)))
    prune_exactly(legacy, X)
    assert legacy[2].weight_g.shape == (4, 1, 1, 1) and legacy[2].weight.shape == (4, 4, 3, 3)


def test_spectral_norm_shrinks_u_and_v_and_stays_exact_in_training():
    """``u`` loses the pruned rows, ``v`` each pruned column's taps; one training forward
    (a step of power iteration) of the masked model equals the shrunk model's."""
    torch.manual_seed(0)
    model = between(parametrizations.spectral_norm(nn.Conv2d(8, 8, 3, padding=1)))
    pruner = Pruner(model.eval(), X, {"sparsity": 0.5})
    pruner.register_masks()
    norm = model[2].parametrizations.weight[0]
    state = copy.deepcopy(norm.state_dict())
    with torch.no_grad():
        masked = model.train()(X)
    norm.load_state_dict(state)
    pruner.apply_masks()
    assert norm._u.shape == (4,) and norm._v.shape == (4 * 9,)
    with torch.no_grad():
        applied = model.train()(X)
    torch.testing.assert_close(applied, masked, atol=1e-5, rtol=0)


def test_pruned_rows_of_v_are_normalised_over_kept_rows():
    """Masks zero a pruned row of ``v`` (and of ``g``); ``g * 0 / ||0||`` is NaN, so while
    masks are registered the weight norm runs on the kept rows only: finetuning the masked
    model stays finite and its pruned rows zero."""
    v, g = torch.zeros(2, 3), torch.zeros(2, 1)
    assert torch.isnan(torch._weight_norm(v, g, 0)).all()
    torch.manual_seed(0)
    for layer in (parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1)),
                  legacy_weight_norm(nn.Conv2d(8, 8, 3, padding=1))):
        model = between(layer)
        pruner = Pruner(model.eval(), X, {"sparsity": 0.5})
        pruner.register_masks()
        train_step(model, X)
        rows = (layer.weight.detach().flatten(1).abs().sum(1) > 0).sum()
        assert rows == 4
        pruner.apply_masks()


def test_pruned_columns_of_v_must_be_zero():
    """``||v||`` runs over every input column: a pruned column left in ``v`` (zero in the
    activation only) would still enter the norm of the kept ones. Zeroed, it gives the
    norm the shrunk layer computes; so masks zero those columns of ``v``, as they do."""
    torch.manual_seed(0)
    v, g = torch.randn(4, 6), torch.rand(4, 1) + 0.5
    shrunk = torch._weight_norm(v[:, :3], g, 0)
    kept = torch._weight_norm(v, g, 0)[:, :3]
    zeroed = torch._weight_norm(torch.cat([v[:, :3], torch.zeros(4, 3)], 1), g, 0)[:, :3]
    assert not torch.allclose(kept, shrunk, atol=1e-3)
    torch.testing.assert_close(zeroed, shrunk)
    model = between(parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1)))
    Pruner(model.eval(), X, {"sparsity": 0.5}).register_masks()
    v = model[2].parametrizations.weight.original1
    assert int((v.detach().abs().sum((0, 2, 3)) == 0).sum()) == 4


def test_low_rank_keeps_its_rank_whole():
    torch.manual_seed(0)
    model = between(LoRAConv(8))
    pruned = prune_exactly(model, X)
    assert model[2].lora_A.shape == (2, 4 * 9) and model[2].lora_B.shape == (4, 2)
    assert all(not g.center.startswith("2.lora") for g in pruned.pruner.groups)


def test_a_parametrization_that_mixes_rows_stays_whole_with_its_reason():
    """``orthogonal`` computes the weight from a matrix exponential of the whole matrix:
    both groups of the layer stay whole, and the reason names the parametrization and
    how to take it off."""
    torch.manual_seed(0)
    model = between(parametrizations.orthogonal(nn.Linear(8, 8)), True)
    groups = analyse(model, X[:, :, 0, 0])
    for center in ("0", "2"):
        reason = groups[center].reasons[0]
        assert not groups[center].prunable
        assert "parametrization _Orthogonal" in reason and "remove_parametrizations(model.2, 'weight')" in reason


def test_a_pruned_parametrized_model_rebuilds_from_its_recipe(tmp_path):
    """``load_pruned`` shrinks a fresh model's parametrizations (weight norm's magnitudes,
    spectral norm's ``u`` and ``v``) as apply did: the saved weights load strictly."""
    from pruneconf import load_pruned
    from pruneconf.recipe import write_atomic, write_recipe

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1)),
                          nn.ReLU(), parametrizations.spectral_norm(nn.Conv2d(8, 8, 1)), nn.ReLU(),
                          nn.Conv2d(8, 2, 1)).eval()
    fresh = copy.deepcopy(model)
    recipe, applied, weights = tmp_path / "r.yaml", tmp_path / "applied.yaml", tmp_path / "w.pt"
    write_atomic(recipe, write_recipe(recipe, Pruner(model, X, {}).groups, input_shapes=[list(X.shape)],
                                      settings={"default_sparsity": 0.5}))
    pruner = Pruner(model, X, str(recipe))
    pruner.apply_masks()
    assert set(pruner.applied.kept) == {"0", "2", "4"}
    pruner.write_applied(recipe, applied)
    torch.save(model.state_dict(), weights)
    load_pruned(fresh, applied, weights)
    assert fresh[4].parametrizations.weight[0]._u.shape == (4,) and fresh[4].in_channels == 4
    with torch.no_grad():
        assert torch.equal(fresh.eval()(X), model(X))
