"""The check behind "exact": the shrunk model must compute what the masked model computed.

Its two ways out are tested here: a shrunk model that *differs* (not only one that fails to
run) is refused and the masked model restored bit for bit; and half-precision models are
held to the same bound as float32 ones, not to a forgiveness of several percent.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn

import pruneconf.apply.verify as verify
from helpers import calibrated
from pruneconf import Pruner, VerificationError
from pruneconf.apply.verify import full_precision, max_relative_error, widened

HALF = (torch.bfloat16, torch.float16)


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def up(t: torch.Tensor, steps: int) -> torch.Tensor:
    """``t`` moved ``steps`` representable values away from zero."""
    for _ in range(steps):
        t = torch.nextafter(t, t.sign() * float("inf"))
    return t


def test_comparison_is_in_full_precision():
    torch.backends.cudnn.allow_tf32 = True
    with full_precision():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32  # restored
    x = torch.linspace(-3, 3, 100)
    assert max_relative_error([x], [x + 1e-6]) == pytest.approx(1e-6 / 3, rel=0.1)  # fp32: exact


def test_nan_or_infinity_on_one_side_only_is_a_difference_and_hides_no_other(monkeypatch):
    """A shrunk model that outputs NaN or inf where the masked one does not is not exact;
    NaN on both sides, or the same infinity, agree; an infinite element does not make the
    scale infinite (which would hide every other difference). Chunks change nothing."""
    monkeypatch.setattr(verify, "_CHUNK", 3)
    x = torch.tensor([1.0, 2.0, float("nan"), float("inf"), -float("inf"), 5.0, 6.0])
    assert max_relative_error([x], [x.clone()]) == 0.0
    for i, value in ((0, float("nan")), (1, float("inf")), (3, 7.0), (4, float("inf"))):
        y = x.clone()
        y[i] = value
        assert max_relative_error([x], [y]) == float("inf"), (i, value)
    y = x.clone()
    y[6] += 1e-3  # scaled by the largest finite magnitude, 6
    assert max_relative_error([x], [y]) == pytest.approx(1e-3 / 6, rel=1e-3)
    assert max_relative_error([torch.empty(0, 3), x], [torch.empty(0, 3), x]) == 0.0


@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_outputs_forgive_two_ulps_of_each_element_and_no_more(dtype):
    x = torch.linspace(-3, 3, 101).to(dtype)
    assert max_relative_error([x], [up(x, 1)]) == 0.0
    assert max_relative_error([x], [up(x, 2)]) == 0.0
    assert max_relative_error([x], [up(x, 4)]) > 1e-5
    # 2 % of every element, and 2 % of one small element next to a large one: both count
    assert max_relative_error([x], [x * 1.02]) > 1e-5
    y = torch.tensor([1.0, 0.05, -0.3]).to(dtype)
    assert max_relative_error([y], [y * torch.tensor([1.0, 1.02, 1.0]).to(dtype)]) > 1e-5


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_model_is_compared_in_float32_and_narrowed_back_exactly(dtype):
    model = small().to(dtype)
    model[1].running_mean.normal_()
    params = {name: (p, p.detach().clone()) for name, p in model.state_dict(keep_vars=True).items()}
    x = {"input": torch.randn(2, 3, 6, 6, dtype=dtype)}
    with widened(model, x) as wide:
        assert wide["input"].dtype == torch.float32 and model[0].weight.dtype == torch.float32
    for name, t in model.state_dict(keep_vars=True).items():
        assert t is params[name][0], name  # the same objects: masks and optimizers keep them
        assert t.dtype == params[name][1].dtype and torch.equal(t, params[name][1]), name


@pytest.mark.parametrize("dtype", HALF)
def test_a_half_precision_model_prunes_exactly(dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = calibrated(torchvision.models.resnet18(), x).to(dtype)
    original = model.conv1.weight.detach().clone()
    pruner = Pruner(model, x.to(dtype), {"sparsity": 0.5})
    plan = pruner.apply_masks()
    assert not pruner.dropped and model.conv1.out_channels == 32
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {dtype}
    assert torch.equal(model.conv1.weight, original[torch.as_tensor(plan.kept["conv1"])])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_shrunk_model_that_differs_is_refused_and_the_masked_model_restored(monkeypatch, dtype):
    """One shrunk weight 2 % off must be caught, in bf16 too, and nothing of it may remain."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = calibrated(small(), x).to(dtype)
    x = x.to(dtype)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.register_masks()  # the dry run is over: only apply's own check is left
    masked_state = copy.deepcopy(model.state_dict())
    masked = outputs(model, x)
    real_shrink = verify.shrink

    def shrink_off_by_two_percent(model, plan, **kwargs):
        done = real_shrink(model, plan, **kwargs)
        assert model[7].in_features == 16  # it is the shrunk layer that is disturbed
        with torch.no_grad():
            model[7].weight.mul_(1.02)
        return done

    monkeypatch.setattr(verify, "shrink", shrink_off_by_two_percent)
    with pytest.raises(VerificationError, match="differs from the masked one"):
        pruner.apply_masks()
    assert model[0].out_channels == 8 and model[7].in_features == 32
    state = model.state_dict()
    assert list(state) == list(masked_state)
    for name, tensor in masked_state.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    assert pruner.masks is not None and torch.equal(outputs(model, x), masked)
    monkeypatch.setattr(verify, "shrink", real_shrink)
    pruner.apply_masks()  # the restored model still prunes
    assert model[7].in_features == 16


class EncoderDecoder(nn.Module):
    """A seq2seq model in miniature: the decoder reads the encoder's features, which the model
    also returns, as a transformers ``ModelOutput`` (``named``) or a plain tuple."""

    def __init__(self, named: bool):
        super().__init__()
        self.named = named
        self.encoder, self.decoder = nn.Linear(10, 16), nn.Linear(16, 5)

    def forward(self, x):
        from transformers.modeling_outputs import Seq2SeqLMOutput

        features = torch.relu(self.encoder(x))
        logits = self.decoder(features)
        return Seq2SeqLMOutput(logits=logits, encoder_last_hidden_state=features) if self.named else (logits, features)


def test_a_model_outputs_secondary_hidden_state_shrinks_with_its_channels():
    """The logits keep their width; the encoder's features narrow to the kept channels, and
    apply checks those against the masked model's."""
    torch.manual_seed(0)
    model, x = EncoderDecoder(named=True).eval(), torch.randn(3, 10)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.register_masks()
    masked = outputs(model, x)
    pruner.apply_masks()
    applied = outputs(model, x)
    kept = pruner.applied.kept["encoder"]
    assert applied.logits.shape == masked.logits.shape and applied.encoder_last_hidden_state.shape == (3, 8)
    torch.testing.assert_close(applied.logits, masked.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(applied.encoder_last_hidden_state, masked.encoder_last_hidden_state[:, kept],
                               atol=1e-6, rtol=0)


def test_outputs_of_a_plain_tuple_keep_their_width():
    pruner = Pruner(EncoderDecoder(named=False), torch.randn(3, 10), {"sparsity": 0.5})
    assert not pruner.groups["encoder"].prunable
    assert any("reaches the model output" in r for r in pruner.groups["encoder"].reasons)


class ReadsItsWidth(nn.Module):
    """A branch that hard-codes its width (the dry run must leave it whole) beside one that
    prunes, with the model's modes mixed: a child in train mode under an eval-mode parent."""

    def __init__(self):
        super().__init__()
        self.hard = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 36, 1)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.fc(self.hard(x).reshape(x.shape[0], 8 * 36)) + self.b(self.bn(self.a(x))).mean((2, 3))


def test_the_dry_run_leaves_the_model_as_it_was_bit_for_bit():
    """The dry run shrinks the model itself (no copy) and puts it back: every tensor object,
    value, attribute and training mode is as before, also when it leaves a group whole."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = ReadsItsWidth().eval()
    model.bn.train()
    before = {k: (v, v.clone()) for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {name: dict(vars(m)) for name, m in model.named_modules()}
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.plan()
    assert list(pruner.dropped) == ["hard"] and "a" in pruner.plan().kept
    after = model.state_dict(keep_vars=True)
    for name, (tensor, value) in before.items():
        assert after[name] is tensor and torch.equal(after[name], value), name
    for name, module in model.named_modules():
        assert {k: v for k, v in vars(module).items() if not k.startswith("_")} == \
               {k: v for k, v in attrs[name].items() if not k.startswith("_")}, name
    assert not model.training and model.bn.training


def test_apply_trusts_the_dry_run_only_while_the_model_is_unchanged(monkeypatch):
    """With nothing changed since the dry run, apply shrinks without running the check again;
    after a training step (or any forward) it checks in full, and still rolls back."""
    calls = []
    real = verify.compare_shrunk

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    import pruneconf.pruner
    monkeypatch.setattr(pruneconf.pruner, "compare_shrunk", counted)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = calibrated(small(), x)
    Pruner(model, x, {"sparsity": 0.5}).apply_masks()
    assert calls == [] and model[0].out_channels == 4

    model = calibrated(small(), x).train()
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.register_masks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).square().mean().backward()
    optimizer.step()
    pruner.apply_masks()
    assert calls == [1] and model[0].out_channels == 4


@pytest.mark.parametrize("make", [small, ReadsItsWidth], ids=["exact-first-trial", "a-group-breaks"])
def test_one_shot_prune_gives_the_model_masks_then_apply_give(make):
    """``prune()`` keeps the dry run's shrunk model when its first trial is exact instead of
    shrinking twice; the model, its modes and the groups left whole are those of
    ``register_masks()`` + ``apply_masks()``, and it computes what the masked model does."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = calibrated(make(), x).train()
    twin = copy.deepcopy(model)
    masked = copy.deepcopy(model)
    Pruner(masked, x, {"sparsity": 0.5}).register_masks()
    one_shot = Pruner(model, x, {"sparsity": 0.5})
    one_shot.prune()
    stepwise = Pruner(twin, x, {"sparsity": 0.5})
    stepwise.register_masks()
    stepwise.apply_masks()
    assert one_shot.dropped == stepwise.dropped and one_shot.applied.kept.keys() == stepwise.applied.kept.keys()
    assert model.training and not any(isinstance(v, torch.Tensor) for v in vars(model).values())
    ours, theirs = model.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in masked.parameters())
    torch.testing.assert_close(outputs(model, x), outputs(masked, x), atol=1e-5, rtol=0)


def test_one_shot_prune_puts_the_model_back_when_its_first_trial_differs(monkeypatch):
    """A first trial that runs but differs is undone like any other: the search then finds
    the culprit on the original model and ``prune()`` finishes by the checked apply."""
    import pruneconf.apply.dryrun as dryrun
    real, calls = dryrun.outputs_problem, []

    def first_differs(expected, got, atol):
        calls.append(1)
        return "differs (injected)" if len(calls) == 1 else real(expected, got, atol)

    monkeypatch.setattr(dryrun, "outputs_problem", first_differs)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    model = calibrated(small(), x)
    masked = copy.deepcopy(model)
    Pruner(masked, x, {"sparsity": 0.5}).register_masks()
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.prune()
    assert len(calls) > 1 and pruner.applied is not None
    torch.testing.assert_close(outputs(model, x), outputs(masked, x), atol=1e-5, rtol=0)
