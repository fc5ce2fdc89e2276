"""Latency-table units are timed alone on fresh inputs laid out in memory as in the model."""
import dataclasses

import torch
from torch import nn

from pruneconf import Pruner
from pruneconf.explore.latency_measure import (_input, dim_order, find_units, place_inputs, place_model,
                                              timing_plan, with_input_orders)
from pruneconf.explore.latency_table import Setup


class ConvNeXtLike(nn.Module):
    """A ConvNeXt block's layout changes: conv (NCHW), permute to (N, H, W, C) for the norm and
    the MLP, permute back; and a ReLU module called on both layouts."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.ReLU()
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        y = self.fc2(self.act(self.fc1(self.norm(x.permute(0, 2, 3, 1)))))
        return self.head(y.permute(0, 3, 1, 2))


def _orders(layout: str) -> tuple[dict, list, Pruner, Setup]:
    model = ConvNeXtLike().eval()
    x = torch.randn(2, 3, 6, 6)
    pruner = Pruner(model, x)
    setup = Setup("cpu", "float32", 2, 1, layout)
    placed = place_model(model, setup)
    units = find_units(placed, pruner.groups, [g.center for g in pruner.groups.prunable])
    units = with_input_orders(placed, place_inputs(x, setup), units)
    return {u.name: u.order for u in units}, units, pruner, setup


def test_unit_inputs_keep_the_models_memory_order():
    """channels_last: the conv reads channels_last, LayerNorm and Linear read the permuted
    tensor, contiguous (made channels_last, C would sit at stride H); the second ReLU call
    (on the MLP's hidden tensor) is told apart from the first."""
    orders, units, pruner, setup = _orders("channels_last")
    assert orders["conv"] == (0, 2, 3, 1) and orders["act"] == (0, 2, 3, 1)
    assert orders["norm"] == orders["fc1"] == orders["fc2"] == orders["act#1"] == (0, 1, 2, 3)
    assert orders["head"] == (0, 2, 3, 1)  # the permute back is channels_last in memory
    contiguous, *_ = _orders("contiguous")
    assert contiguous["conv"] == (0, 1, 2, 3) and contiguous["fc1"] == (0, 1, 2, 3)
    assert contiguous["head"] == (0, 2, 3, 1)  # even without channels_last, as the model hands it on

    by_name = {u.name: u for u in units}
    hidden = next(g for g in pruner.groups.prunable if g.channels == 32)
    plan = timing_plan(pruner.groups, {hidden.center: 8})
    for name in ("conv", "fc1", "act#1", "fc2", "head"):
        for p in (None, plan):
            x = _input(by_name[name], pruner.groups, p, setup)
            assert dim_order(x) == orders[name] and x.is_contiguous(memory_format=torch.contiguous_format) \
                == (orders[name] == (0, 1, 2, 3))
    assert _input(by_name["fc2"], pruner.groups, plan, setup).shape[-1] == 8


def test_a_call_the_run_does_not_make_is_timed_contiguous():
    _, units, pruner, setup = _orders("channels_last")
    unseen = [dataclasses.replace(u, order=None) for u in units]
    assert all(_input(u, pruner.groups, None, setup).is_contiguous() for u in unseen)


def test_layer_timings_take_at_least_unit_calls(monkeypatch):
    """Each unit is timed over at least UNIT_CALLS calls: a slow layer timed once at a short run
    time varied 2-4x from one timing to the next."""
    from pruneconf.explore import latency_measure
    from pruneconf.explore.latency import UNIT_CALLS

    asked = []
    monkeypatch.setattr(latency_measure, "time_ms", lambda *args: asked.append(args[5]) or 1.0)
    _, units, pruner, setup = _orders("channels_last")
    latency_measure.time_unit(place_model(pruner.model, setup), units[0], pruner.groups, setup, 0.001)
    assert asked == [UNIT_CALLS] and UNIT_CALLS >= 3
