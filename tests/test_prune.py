"""Phase two: recipe in, masks for finetuning, then a smaller model that computes the same."""
import copy
import logging
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import calibrated
from pruneconf import ConfigError, OneShotChannelPruner, Pruner, VerificationError
from pruneconf.recipe import load_document, write_atomic, write_recipe
from pruneconf.recipe.plan import kept_channels
from pruneconf.recipe.yamlio import dump_document


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 24, 1)
        self.gn = nn.GroupNorm(4, 24)
        self.skip = nn.Conv2d(16, 24, 1)
        self.fc1 = nn.Linear(24 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        z = F.relu(self.gn(self.pw(self.dw(y)))) + self.skip(y)
        z = F.adaptive_avg_pool2d(z, 4).flatten(1)
        return self.fc2(F.relu(self.fc1(z)))


def outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_tutorial_snippet_reproduces_the_flops():
    model = torchvision.models.mobilenet_v2()
    model.train()
    pruner = OneShotChannelPruner(model, torch.randn(1, 3, 224, 224), config={"sparsity": 0.25, "metrics": "l2_norm"})
    st_flops = pruner.calc_flops()
    pruner.prune()
    ed_flops = pruner.calc_flops()
    assert (st_flops, ed_flops) == (314_130_496, 185_359_152)
    assert f"{(ed_flops - st_flops) / st_flops * 100:.2f}%" == "-40.99%"
    assert model.training  # the mode the user left it in
    assert model.features[0][0].out_channels == 24 and model.classifier[1].out_features == 1000


def test_prune_logs_each_layer_change(caplog):
    model = torchvision.models.mobilenet_v2()
    with caplog.at_level(logging.INFO, logger="pruneconf"):
        OneShotChannelPruner(model, torch.randn(1, 3, 224, 224), {"sparsity": 0.25}).prune()
    assert "[CONV] features.0.0: output 32 -> 24" in caplog.text
    assert "[BN] features.0.1: channel 32 -> 24" in caplog.text
    assert "[FC] classifier.1: input 1280 -> 960" in caplog.text


@pytest.mark.parametrize("metric", ["l1_norm", "l2_norm", "fpgm", "random", "bn_gamma"])
def test_masked_equals_applied_for_every_metric(metric):
    x = torch.randn(4, 3, 8, 8)
    model = calibrated(Net(), x)
    pruner = Pruner(model, x, {"sparsity": 0.5, "metric": metric})
    pruner.register_masks()
    masked = outputs(model, x)
    pruner.apply_masks()
    assert torch.allclose(outputs(model, x), masked, atol=1e-5)
    assert model.stem.out_channels == 8 and model.pw.out_channels == 12 and model.fc1.out_features == 16
    assert model.dw.groups == 8 and model.gn.num_groups == 2 and model.fc1.in_features == 12 * 16
    assert not model._forward_pre_hooks and all(not p._backward_hooks for p in model.parameters())


def test_sparsity_zero_is_the_original_bit_for_bit():
    x = torch.randn(4, 3, 8, 8)
    model = calibrated(Net(), x)
    reference = copy.deepcopy(model)
    Pruner(model, x, {"sparsity": 0.0}).apply_masks()
    assert torch.equal(outputs(model, x), outputs(reference, x))
    for (k, v), (_, w) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(v, w), k


def test_finetune_keeps_masked_channels_at_zero_then_applies_exactly():
    x, target = torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))
    model = calibrated(Net(), x).train()
    pruner = Pruner(model, x, {"sparsity": 0.5})
    masks = pruner.register_masks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    params = dict(model.named_parameters())
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(x), target).backward()
        for name, mask in masks.masks.items():
            assert not (params[name].grad * (1 - mask)).any(), f"{name} has gradient on pruned channels"
        optimizer.step()
        for name, mask in masks.masks.items():
            assert not (params[name] * (1 - mask)).any(), f"{name} left zero"
    state = model.state_dict()
    assert set(state) == set(Net().state_dict())  # a normal state dict: loads into the original architecture
    Net().load_state_dict(state)
    masked = outputs(model, x)
    pruner.apply_masks()
    assert torch.allclose(outputs(model, x), masked, atol=1e-5)


def test_same_weights_and_recipe_keep_the_same_channels():
    x = torch.randn(4, 3, 8, 8)
    model = Net()
    a = Pruner(copy.deepcopy(model), x, {"sparsity": 0.3}).plan().kept
    b = Pruner(copy.deepcopy(model), x, {"sparsity": 0.3}).plan().kept
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_round_to_keeps_multiples():
    assert [kept_channels(64, 0.3, 8), kept_channels(100, 0.5, 8), kept_channels(10, 0.95, 8)] == [48, 48, 8]
    assert kept_channels(16, 0.3, 8) == 16  # 12 rounds to 16: nothing to prune
    plan = Pruner(Net(), torch.randn(4, 3, 8, 8), {"sparsity": 0.3, "round_to": 8}).plan()
    assert {k: len(v) for k, v in plan.kept.items()} == {"fc1": 24}


def test_recipe_per_group_sparsity_and_exclusion(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    model = Net()
    path = tmp_path / "r.yaml"
    write_atomic(path, write_recipe(path, Pruner(model, x, {}).groups))
    doc = load_document(path)
    doc["groups"]["stem"]["sparsity"] = 0.75
    doc["settings"]["exclude"] = ["p*"]
    write_atomic(path, dump_document(doc))
    plan = Pruner(model, x, str(path)).plan()
    assert len(plan.kept["stem"]) == 4 and "pw" not in plan.kept and len(plan.kept["fc1"]) == 16


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("\n  pw:", "\n  pww:"), "'groups.pww': no such group in the model; did you mean 'pw'?"),
    (lambda t: t.replace("\n  pw:", "\n  dw:"), "'groups.dw': 'dw' is a member of group 'stem', not a group center"),
    (lambda t: re.sub(r"(\n  pw:[^\n]*\n    sparsity: )0.5", r"\g<1>1.5", t), "'groups.pw.sparsity': expected a number in [0, 1), got 1.5"),
    (lambda t: t.replace("metric: l2_norm", "metric: l3_norm"), "'settings.metric': unknown metric 'l3_norm'"),
    (lambda t: t.replace("round_to: 1", "round_too: 1"), "'settings.round_too': unknown key; did you mean 'round_to'?"),
    (lambda t: t.replace("fingerprint: sha256:", "fingerprint: sha256:0"), "'fingerprint': the recipe was made for another model"),
])
def test_bad_recipes_name_line_and_key_and_leave_the_model_alone(tmp_path, edit, message):
    x = torch.randn(4, 3, 8, 8)
    model = Net()
    text = write_recipe(tmp_path / "r.yaml", Pruner(copy.deepcopy(model), x, {}).groups, model="m:f")
    path = tmp_path / "bad.yaml"
    path.write_text(edit(text))
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError) as err:
        Pruner(model, x, str(path)).apply_masks()
    assert message in str(err.value) and str(err.value).startswith(f"{path}:")
    assert err.value.line is not None
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


class HardCoded(nn.Module):
    """A forward that hard-codes the channel count: only the check after shrinking sees it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 36, 2)

    def forward(self, x):
        return self.fc(self.conv(x).reshape(x.shape[0], 8 * 36))


def test_a_group_whose_shrinking_breaks_the_model_is_left_whole():
    x = torch.randn(2, 3, 6, 6)
    model = HardCoded()
    reference = outputs(model, x)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()
    assert list(pruner.dropped) == ["conv"] and "fails to run" in pruner.dropped["conv"]
    assert model.conv.out_channels == 8 and model.fc.in_features == 8 * 36
    assert torch.equal(outputs(model, x), reference)


def test_the_dry_run_finds_each_breaking_group_and_keeps_the_rest():
    class TwoBranches(nn.Module):
        def __init__(self):
            super().__init__()
            self.hard = HardCoded()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.hard(x) + self.b(self.a(x)).mean((2, 3))

    x = torch.randn(2, 3, 6, 6)
    model = TwoBranches()
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()
    assert list(pruner.dropped) == ["hard.conv"]
    assert model.a.out_channels == 4 and model.hard.conv.out_channels == 8


def test_a_shrunk_model_that_breaks_is_rolled_back(monkeypatch):
    """Should a break slip past the dry run, apply's own check restores the masked model."""
    import pruneconf.pruner

    monkeypatch.setattr(pruneconf.pruner, "drop_breaking_groups", lambda model, x, plan, **kwargs: (plan, {}))
    x = torch.randn(2, 3, 6, 6)
    model = HardCoded()
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.register_masks()
    masked_state = copy.deepcopy(model.state_dict())
    masked = outputs(model, x)
    with pytest.raises(VerificationError, match="fails to run"):
        pruner.apply_masks()
    assert model.conv.out_channels == 8 and model.fc.in_features == 8 * 36
    for k, v in model.state_dict().items():
        assert torch.equal(v, masked_state[k]), k
    assert torch.equal(outputs(model, x), masked)


class Decoder(nn.Module):
    """Transposed and 1-d convolutions, plain and grouped, with norms between them."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv1d(3, 8, 3, padding=1)
        self.mix = nn.Conv1d(8, 8, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose1d(8, 12, 2, stride=2)
        self.bn = nn.BatchNorm1d(12)
        self.up2 = nn.ConvTranspose1d(12, 12, 2, stride=2, groups=3)
        self.out = nn.Conv1d(12, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.up2(F.relu(self.bn(self.up(self.mix(self.enc(x))))))))


def test_transposed_and_grouped_convolutions_shrink_exactly():
    x = torch.randn(4, 3, 10)
    model = calibrated(Decoder(), x)
    reference = outputs(model, x)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()  # raises unless the shrunk model matches the masked one
    assert outputs(model, x).shape == reference.shape
    # mix (groups=4, 2 in and 2 out per group) loses one channel inside each of its groups
    assert (model.enc.out_channels, model.mix.groups, model.mix.out_channels) == (4, 4, 4)
    assert model.mix.weight.shape[:2] == (4, 1)
    # up2 (groups=3) couples each of its groups of 4 inputs with its 4 outputs: 3 units, 2 kept
    assert (model.up.in_channels, model.up.out_channels, model.up2.groups) == (4, 8, 2)
    assert model.up2.in_channels == 8 and model.up2.out_channels == 8 and model.out.in_channels == 8


@pytest.mark.parametrize("threshold", [0, 1 << 40], ids=["one-gather", "two-selects"])
def test_a_weight_cut_on_both_sides_is_taken_in_one_gather_when_large(monkeypatch, threshold):
    """Above the size threshold a weight pruned along its rows and its columns is sliced by
    one gather (no rows-only copy in between); the pruned model is the same either way."""
    shrink_module = __import__("pruneconf.apply.shrink", fromlist=["shrink"])
    monkeypatch.setattr(shrink_module, "_ONE_GATHER", threshold)
    selected = []  # shapes cut one dim at a time
    real = shrink_module.kept_positions
    monkeypatch.setattr(shrink_module, "kept_positions",
                        lambda tensor, dim, keep: selected.append(tuple(tensor.shape)) or real(tensor, dim, keep))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 64), nn.ReLU(),
                          nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 5)).eval()
    x = torch.randn(2, 3, 8, 8)
    expected = copy.deepcopy(model)
    Pruner(expected, x, {"sparsity": 0.5}).register_masks()
    Pruner(model, x, {"sparsity": 0.5}).prune()
    assert model[5].weight.shape == (24, 32) and model[3].weight.shape == (32, 8 * 36)
    cut_on_both_sides = {(64, 16 * 36), (48, 64)}
    assert cut_on_both_sides.isdisjoint(selected) == (threshold == 0)
    torch.testing.assert_close(model(x), expected(x), atol=1e-6, rtol=0)
