"""Weight metrics score a channel by its sources' rows plus its consumers' columns, and
ranking keeps per-dim totals only (a weight-sized plane per 1x1 conv made ranking the peak
of a whole ResNet-50 prune)."""
import numpy as np
import pytest
import torch
from torch import nn

from pruneconf import Pruner
from pruneconf.masks import METRICS, importance
from pruneconf.masks.plan import rank_inputs


class Convs(nn.Module):
    """A 3x3 conv, a 1x1 conv and a linear in a chain: planes of both kinds, and a 2-D weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.fc(self.b(self.a(x).relu()).relu().mean((2, 3)))


def naive(weight: torch.Tensor, dim: int, power: int) -> np.ndarray:
    """Per index along ``dim``: Σ|w|^power over every other position, the slow way."""
    rows = weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1).double()
    return rows.abs().pow(power).sum(1).numpy()


@pytest.mark.parametrize("metric, power", [("l1_norm", 1), ("l2_norm", 2)])
def test_scores_are_source_rows_plus_consumer_columns_and_only_totals_are_kept(metric, power):
    model = Convs().eval()
    pruner = Pruner(model, torch.randn(1, 3, 8, 8), {"sparsity": 0.5, "metric": metric})
    inputs = rank_inputs(model, pruner.recipe, None)
    score = METRICS[metric]
    for center, producer, consumer in [("a", model.a, model.b), ("b", model.b, model.fc)]:
        expected = naive(producer.weight, 0, power) + naive(consumer.weight, 1, power)
        got = score(pruner.groups[center], inputs)
        expected = np.sqrt(expected) if power == 2 else expected
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert inputs.row_scores, "ranking caches its per-dim totals"
    assert all(isinstance(v, np.ndarray) and v.ndim == 1 for v in inputs.row_scores.values())


@pytest.mark.parametrize("power", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, dims", [((50, 30), (0,)), ((50, 30), (1,)), ((12, 10, 3, 3), (0, 2, 3)),
                                         ((12, 10, 3, 3), (2, 3)), ((7,), ())])
def test_power_sums_match_the_naive_sum_across_chunks(monkeypatch, power, dtype, shape, dims):
    """A leading dim is reduced chunk by chunk (here several chunks of a few rows each),
    trailing dims by a norm, a 1-D parameter index by index; all in float32."""
    monkeypatch.setattr(importance, "_CHUNK", 64)
    torch.manual_seed(0)
    values = torch.randn(*shape).to(dtype)
    wide = values.double().abs() ** power
    expected = wide.sum(dims) if dims else wide
    scratch = {}
    got = importance._power_sum(values, dims, power, scratch)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    again = importance._power_sum(values.flip(0).contiguous(), dims, power, scratch)  # the buffer's leftovers
    torch.testing.assert_close(again.double(), wide.flip(0).sum(dims) if dims else wide.flip(0), rtol=1e-5, atol=1e-5)


def test_a_ranking_transforms_every_weight_in_one_buffer(monkeypatch):
    """Chunks of every weight go through one buffer per ranking, not one allocation each."""
    monkeypatch.setattr(importance, "_CHUNK", 64)
    scratch, buffers = {}, []
    for rows, columns in ((50, 30), (40, 20), (9, 15)):  # chunks of 2 x 30, 3 x 20 and 4 x 15 elements
        importance._power_sum(torch.randn(rows, columns), (0,), 2, scratch)
        buffers.append(scratch[torch.device("cpu")])
    assert list(scratch) == [torch.device("cpu")] and buffers[0] is buffers[1] is buffers[2]
