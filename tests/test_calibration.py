"""Data metrics: calibration statistics are what they claim, streaming, deterministic, exact."""
import copy
import gc
import logging
import weakref

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from helpers import calibrated, prune_exactly
from pruneconf import ConfigError, Pruner, find_groups, trace
from pruneconf.masks import DATA_METRICS, METRICS, calibrate
from pruneconf.masks.calibration import Calibrator
from pruneconf.recipe.load import METRICS as RECIPE_METRICS, Recipe, Settings




def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).eval()


class Branchy(nn.Module):
    """Depthwise conv, GroupNorm, a residual add and flatten -> linear: every kind of member."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw, self.pw = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 24, 1)
        self.gn, self.skip = nn.GroupNorm(4, 24), nn.Conv2d(16, 24, 1)
        self.fc1, self.fc2 = nn.Linear(24 * 4 * 4, 32), nn.Linear(32, 5)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        z = F.relu(self.gn(self.pw(self.dw(y)))) + self.skip(y)
        return self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(z, 4).flatten(1))))


def images(n: int, seed: int = 1, size: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, size, size, generator=gen) for _ in range(n)]


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def token_batches(n: int, length: int = 12) -> list[dict]:
    gen = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(0, 64, (3, length), generator=gen)} for _ in range(n)]


def test_activation_is_the_mean_abs_input_of_each_consumer():
    model, batches = cnn(), images(3)
    stats = calibrate(model, find_groups(trace(model, batches[0])), batches, ("activation",))
    with torch.no_grad():
        relu1 = torch.cat([model[:3](b) for b in batches])   # read by conv 3
        relu2 = torch.cat([model[:5](b) for b in batches])   # read by the linear, through flatten
    np.testing.assert_allclose(stats.scores["activation"]["0"], relu1.abs().mean((0, 2, 3)).numpy(), rtol=1e-5)
    # flatten spreads a channel over 16 positions; each position's mean adds up
    np.testing.assert_allclose(stats.scores["activation"]["3"], 16 * relu2.abs().mean((0, 2, 3)).numpy(), rtol=1e-5)
    assert stats.batches == 3 and "taylor" not in stats.scores


def test_taylor_is_the_group_first_order_term_summed_over_batches():
    model, batches = cnn(), images(3)
    stats = calibrate(model, find_groups(trace(model, batches[0])), batches, ("taylor",))
    expected = torch.zeros(6, dtype=torch.float64)
    for b in batches:
        model.zero_grad()
        model(b).pow(2).mean().backward()
        conv, fc = model[3], model[6]
        terms = ((conv.weight * conv.weight.grad).sum((1, 2, 3)) + conv.bias * conv.bias.grad
                 + (fc.weight * fc.weight.grad).reshape(5, 6, 16).sum((0, 2)))
        expected += terms.detach().double().abs()
    np.testing.assert_allclose(stats.scores["taylor"]["3"], expected.numpy(), rtol=1e-4)


def test_calibration_leaves_the_model_as_it_was():
    model = cnn().train()
    model[0].weight.requires_grad_(False)
    model[3].weight.grad = torch.ones_like(model[3].weight)
    state = copy.deepcopy(model.state_dict())
    calibrate(model, find_groups(trace(model, images(1)[0])), images(2))
    assert model.training and not model[0].weight.requires_grad and model[6].weight.grad is None
    assert torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("metric", ["activation", "taylor"])
def test_same_data_and_weights_give_the_same_scores_and_channels(metric):
    model = calibrated(Branchy(), images(1)[0])
    groups = find_groups(trace(model, images(1)[0]))
    first, second = (calibrate(model, groups, images(4), (DATA_METRICS[metric],)) for _ in range(2))
    for center, scores in first.scores[DATA_METRICS[metric]].items():
        assert np.array_equal(scores, second.scores[DATA_METRICS[metric]][center])
    kept = [Pruner(copy.deepcopy(model), images(1)[0], {"sparsity": 0.5, "metric": metric},
                   calibration=images(4)).plan().kept for _ in range(2)]
    assert kept[0].keys() == kept[1].keys() and all(np.array_equal(kept[0][c], kept[1][c]) for c in kept[0])
    # and the data matters: other batches rank differently somewhere
    other = calibrate(model, groups, images(4, seed=7), (DATA_METRICS[metric],))
    assert any(not np.array_equal(s, other.scores[DATA_METRICS[metric]][c])
               for c, s in first.scores[DATA_METRICS[metric]].items())


def test_statistics_do_not_grow_with_the_number_of_batches_and_no_batch_is_kept():
    model = tiny_llama()
    groups = find_groups(trace(model, token_batches(1)[0]))
    calibrator = Calibrator(model, groups)
    sizes, alive = [], []
    with calibrator.session():
        for batch in token_batches(12, length=16):
            calibrator.update(batch)
            alive.append(weakref.ref(batch["input_ids"]))
            sizes.append(calibrator.nbytes())
            del batch
    gc.collect()
    assert sizes[0] > 0 and len(set(sizes)) == 1, sizes
    assert all(ref() is None for ref in alive)  # neither batches nor activations are retained
    assert calibrator.result().batches == 12
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("metric", ["activation", "taylor"])
@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_masked_equals_applied_with_data_metrics(metric, mode):
    x = images(1)[0]
    recipe = Recipe(path="<test>", settings=Settings(default_sparsity=0.5, metric=metric, mode=mode), sparsity={})
    pruned = prune_exactly(Branchy(), x, recipe, calibration=images(3))
    assert pruned.pruner.calibration.batches == 3 and pruned.pruner.applied.kept


@pytest.mark.parametrize("metric", ["activation", "taylor"])
def test_llama_heads_and_mlp_prune_exactly_and_generate_the_same(metric):
    model = tiny_llama()
    example = token_batches(1)[0]
    pruner = Pruner(model, example, {"sparsity": 0.5, "metric": metric}, calibration=token_batches(3, length=20))
    pruner.register_masks()
    prompt = torch.tensor([[1, 5, 9, 3]])
    masked = model.generate(prompt, max_new_tokens=8, do_sample=False)
    masked_logits = model(**example).logits
    pruner.apply_masks()
    assert model.model.layers[0].mlp.down_proj.in_features == 24
    assert model.model.layers[0].self_attn.o_proj.in_features == 16
    torch.testing.assert_close(model(**example).logits, masked_logits, atol=1e-5, rtol=0)
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False), masked)


def test_activation_follows_the_data_on_llama_mlp_channels():
    """Channels silenced on the calibration data rank last; weights alone cannot see that."""
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:12] *= 1e-3  # first 12 MLP channels output ~0
    stats = calibrate(model, find_groups(trace(model, token_batches(1)[0])), token_batches(2), ("activation",))
    score = stats.scores["activation"]["model.layers.0.mlp.gate_proj"]
    assert set(np.argsort(score)[:12]) == set(range(12))


def test_a_data_metric_without_data_is_a_located_error():
    with pytest.raises(ConfigError, match="settings.metric.*calibration"):
        Pruner(cnn(), images(1)[0], {"sparsity": 0.5, "metric": "taylor"}).plan()


def test_a_weight_metric_ignores_calibration_and_records_nothing(caplog):
    pruner = Pruner(cnn(), images(1)[0], {"sparsity": 0.5}, calibration=images(2))
    with caplog.at_level(logging.INFO, logger="pruneconf"):
        pruner.plan()
    assert pruner.calibration is None and "not used" in caplog.text


def test_calibrate_after_planning_and_empty_data_are_refused():
    pruner = Pruner(cnn(), images(1)[0], {"sparsity": 0.5, "metric": "activation"})
    with pytest.raises(Exception, match="no batches"):
        pruner.calibrate([])
    pruner.calibrate(images(1))
    pruner.plan()
    with pytest.raises(Exception, match="before the plan"):
        pruner.calibrate(images(1))


def test_every_registered_metric_is_a_recipe_metric():
    assert set(METRICS) == set(RECIPE_METRICS) and set(DATA_METRICS) <= set(METRICS)
