"""One unit test per channel rule: a source layer, the op under test, a consumer.

Each case states the rule it exercises, whether the source's group must stay prunable (then
the no-influence invariant is checked) or which reason must block it, and optionally the
channel count of the group. `test_every_rule_has_a_case` keeps the table complete.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import analyse, assert_no_influence
from pruneconf.groups import registry


class Between(nn.Module):
    """``post(fn(pre(x)))``: ``pre`` is the group's center."""

    def __init__(self, fn: Callable, pre: nn.Module, post: nn.Module | None = None):
        super().__init__()
        self.fn, self.pre, self.post = fn, pre, post or nn.Identity()
        self.extra = nn.ModuleDict()

    def forward(self, x):
        return self.post(self.fn(self, self.pre(x)))


def conv(c_in=3, c_out=8, **kw):
    return nn.Conv2d(c_in, c_out, 3, padding=1, **kw)


@dataclasses.dataclass
class Case:
    rule: str
    model: Callable[[], nn.Module]
    shape: tuple = (2, 3, 6, 6)
    channels: int | None = None
    blocked: str | None = None  # substring of the reason, or None if prunable
    center: str = "pre"
    notes: list[str] = dataclasses.field(default_factory=list)


def with_extra(fn, **modules):
    def build():
        m = fn()
        for k, v in modules.items():
            m.extra[k] = v
        return m
    return build


def packed_lstm(m, y):
    packed = nn.utils.rnn.pack_padded_sequence(y, [5, 3], batch_first=True)
    return nn.utils.rnn.pad_packed_sequence(m.extra["lstm"](packed)[0], batch_first=True)[0]


CASES = [
    Case("unary", lambda: Between(lambda m, y: F.hardswish(F.dropout(y.float(), 0.1, False)), conv(), conv(8, 2)), channels=8),
    Case("nary", lambda: Between(lambda m, y: torch.where(y > 0, y, y * 0.1) - y.mean((2, 3), keepdim=True), conv(), conv(8, 2)), channels=8),
    Case("max_min", lambda: Between(lambda m, y: torch.max(y, torch.relu(y)), conv(), conv(8, 2)), channels=8),
    Case("max_min", lambda: Between(lambda m, y: torch.max(y, dim=1, keepdim=True)[0], conv(), conv(1, 2)), blocked="reduced by 'max'"),
    Case("prelu", lambda: Between(lambda m, y: m.extra["act"](y), conv(), conv(8, 2)), channels=8),
    Case("factory", lambda: Between(lambda m, y: y + torch.rand(1, 8, 1, 1), conv(), conv(8, 2)), blocked="tensor created with fixed sizes"),
    Case("uniform_factory", lambda: Between(lambda m, y: y + torch.ones(1, 8, 1, 1), conv(), conv(8, 2)), channels=8),
    Case("uniform_factory", lambda: Between(lambda m, y: y * y.new_full((2, 8, 6, 6), 0.5), conv(), conv(8, 2)), channels=8),
    Case("conv", lambda: Between(lambda m, y: y, conv(), conv(8, 2)), channels=8),
    Case("conv", lambda: Between(lambda m, y: y, conv(), nn.Sequential(conv(8, 4, groups=4), conv(4, 2))), channels=4),
    Case("conv_transpose", lambda: Between(lambda m, y: y, conv(), nn.ConvTranspose2d(8, 3, 2, stride=2)), channels=8),
    Case("conv_transpose", lambda: Between(lambda m, y: y, nn.ConvTranspose2d(3, 8, 2, stride=2), conv(8, 2)), channels=8),
    Case("linear", lambda: Between(lambda m, y: y, nn.Linear(6, 8), nn.Linear(8, 2)), shape=(2, 5, 6), channels=8),
    Case("embedding", lambda: Between(lambda m, y: y, nn.Embedding(10, 8), nn.Linear(8, 2)), shape=(2, 5), channels=8),
    Case("matmul", lambda: Between(lambda m, y: m.extra["proj"](y), nn.Linear(6, 8), nn.Linear(4, 2)), shape=(2, 5, 6), channels=8),
    Case("matmul", lambda: Between(lambda m, y: y @ y.transpose(1, 2), nn.Linear(6, 8), nn.Linear(5, 2)), shape=(2, 5, 6), blocked="contracted by 'matmul'"),
    Case("einsum", lambda: Between(lambda m, y: torch.einsum("bchw,co->bohw", y, m.extra["proj"].w), conv(), conv(4, 2)), channels=8),
    Case("einsum", lambda: Between(lambda m, y: torch.einsum("bchw,bchw->bhw", y, y).flatten(1), conv(), nn.Linear(36, 2)), blocked="contracted by 'einsum' between two activations"),
    Case("addmm", lambda: Between(lambda m, y: m.extra["addmm"](y), nn.Linear(6, 8), nn.Linear(4, 2)), shape=(2, 6), channels=8),
    Case("multi_head_attention", lambda: Between(lambda m, y: m.extra["mha"](y, y, y)[0], nn.Linear(6, 8), nn.Linear(8, 2)), shape=(2, 5, 6), channels=4, notes=["masked_contraction"]),  # dim j of both heads: one channel
    Case("scaled_dot_product_attention", lambda: Between(lambda m, y: F.scaled_dot_product_attention(y, y, y), nn.Linear(6, 8), nn.Linear(8, 2)), shape=(2, 5, 6), blocked="contracted inside attention"),
    Case("recurrent", lambda: Between(lambda m, y: m.extra["lstm"](y)[0], nn.Linear(6, 8), nn.Linear(10, 2)), shape=(2, 5, 6), channels=8),
    Case("recurrent", lambda: Between(lambda m, y: m.extra["lstm"](y)[0], nn.Linear(6, 8), nn.Linear(10, 2)), shape=(2, 5, 6), channels=5, center="extra.lstm"),
    Case("pack_padded_sequence", lambda: Between(lambda m, y: packed_lstm(m, y), nn.Linear(6, 8), nn.Linear(10, 2)), shape=(2, 5, 6), channels=8),
    Case("pad_packed_sequence", lambda: Between(lambda m, y: packed_lstm(m, y), nn.Linear(6, 8), nn.Linear(10, 2)), shape=(2, 5, 6), channels=5, center="extra.lstm"),
    Case("recurrent_cell", lambda: Between(lambda m, y: m.extra["cell"](y[:, 0])[0], nn.Linear(6, 8), nn.Linear(5, 2)), shape=(2, 5, 6), channels=5, center="extra.cell"),
    Case("batch_norm", lambda: Between(lambda m, y: m.extra["bn"](y), conv(), conv(8, 2)), channels=8),
    Case("group_norm", lambda: Between(lambda m, y: m.extra["gn"](y), conv(), conv(8, 2)), channels=4),
    Case("layer_norm", lambda: Between(lambda m, y: m.extra["ln"](y), nn.Linear(6, 8), nn.Linear(8, 2)), shape=(2, 5, 6), channels=8, notes=["channel_stats"]),
    Case("pool", lambda: Between(lambda m, y: F.max_pool2d(F.avg_pool2d(y, 2), 1), conv(), conv(8, 2)), channels=8),
    Case("resize", lambda: Between(lambda m, y: F.interpolate(y, scale_factor=2.0, mode="bilinear"), conv(), conv(8, 2)), channels=8),
    Case("pad", lambda: Between(lambda m, y: F.pad(y, (1, 1, 0, 0, 2, 1)), conv(), conv(11, 2)), channels=8),
    Case("pad", lambda: Between(lambda m, y: F.pad(y, (0, 0, 0, 0, 1, 1), mode="replicate"), conv(), conv(10, 2)), blocked="padded in 'replicate' mode"),
    Case("pad", with_extra(lambda: Between(lambda m, y: y + F.pad(m.extra["sc"](y), (0, 0, 0, 0, 2, 2)), conv(), conv(8, 2)),
                           sc=conv(8, 4)), channels=8),  # padding channels pinned, the rest prunable
    Case("reshape", lambda: Between(lambda m, y: y.reshape(y.shape[0], 2, -1, 6, 6).transpose(1, 2).flatten(1, 2), conv(), conv(8, 2)), channels=8),  # a channel shuffle: moved, not coupled
    Case("reshape", lambda: Between(lambda m, y: y.reshape(y.shape[0], 2, -1, 6, 6).transpose(1, 2).relu().flatten(1, 2), conv(), conv(8, 2)), channels=4),  # not only a shuffle: split and coupled
    Case("permute", lambda: Between(lambda m, y: y.permute(0, 2, 3, 1), conv(), nn.Linear(8, 2)), channels=8),
    Case("transpose", lambda: Between(lambda m, y: y.flatten(2).transpose(1, 2).mT.movedim(1, 2), nn.Identity(), nn.Linear(8, 2)), center="extra.c"),
    Case("squeeze", lambda: Between(lambda m, y: y.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1).unsqueeze(0)[0], conv(), nn.Linear(8, 2)), channels=8),
    Case("expand", lambda: Between(lambda m, y: y.mean((2, 3), keepdim=True).expand(-1, -1, 6, 6), conv(), conv(8, 2)), channels=8),
    Case("repeat", lambda: Between(lambda m, y: y.repeat(1, 2, 1, 1), conv(), conv(16, 2)), channels=8),
    Case("repeat_interleave", lambda: Between(lambda m, y: y.repeat_interleave(3, dim=1), conv(), conv(24, 2)), channels=8),
    Case("flip", lambda: Between(lambda m, y: y.flip(1), conv(), conv(8, 2)), channels=8),
    Case("roll", lambda: Between(lambda m, y: y.roll(1, dims=1), conv(), conv(8, 2)), blocked="shifted by 'roll'"),
    Case("pixel_shuffle", lambda: Between(lambda m, y: F.pixel_shuffle(y, 2), conv(), conv(2, 2)), channels=2),
    Case("pixel_unshuffle", lambda: Between(lambda m, y: F.pixel_unshuffle(y, 2), conv(), conv(32, 2)), channels=8),
    Case("channel_shuffle", lambda: Between(lambda m, y: F.channel_shuffle(y, 2), conv(), conv(8, 2)), channels=8),  # moved, not coupled
    Case("getitem", lambda: Between(lambda m, y: y[:, :, 1:, ...][..., None].squeeze(-1), conv(), conv(8, 2)), channels=8),
    Case("getitem", lambda: Between(lambda m, y: y[:, 2:], conv(), conv(6, 2)), blocked="constant indices in 'getitem'"),
    Case("setitem", lambda: Between(lambda m, y: m.extra["keep"](y), conv(), conv(8, 2)), channels=8),
    Case("cat", lambda: Between(lambda m, y: torch.cat([y, y * 2], 1), conv(), conv(16, 2)), channels=8),
    Case("stack", lambda: Between(lambda m, y: torch.stack([y, y], 0).sum(0), conv(), conv(8, 2)), channels=8),
    Case("split", lambda: Between(lambda m, y: sum(y.chunk(2, dim=1)), conv(), conv(4, 2)), channels=4),
    Case("split", lambda: Between(lambda m, y: y.split([4, 4], dim=1)[0], conv(), conv(4, 2)), blocked="constant sizes"),
    Case("split", lambda: Between(lambda m, y: sum(y.split(4, dim=1)), conv(), conv(4, 2)), channels=4),  # even pieces
    Case("narrow", lambda: Between(lambda m, y: y.narrow(1, 0, 4), conv(), conv(4, 2)), blocked="constant indices in 'narrow'"),
    Case("narrow", lambda: Between(lambda m, y: y.narrow(1, -4, 4), conv(), conv(4, 2)), blocked="constant length by 'narrow'"),
    Case("glu", lambda: Between(lambda m, y: F.glu(y, 1), conv(), conv(4, 2)), channels=4),
    Case("index_add", lambda: Between(lambda m, y: torch.zeros_like(y).index_add(0, torch.tensor([1, 0]), y),
                                      conv(), conv(8, 2)), channels=8),
    Case("index_add", lambda: Between(lambda m, y: y.index_add(1, torch.arange(8), y), conv(), conv(8, 2)),
         blocked="positions chosen by an index tensor"),
    Case("reduce_rule", lambda: Between(lambda m, y: y.sum(1, keepdim=True), conv(), conv(1, 2)), blocked="reduced by 'sum'"),
    Case("statistic", lambda: Between(lambda m, y: y * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-6), nn.Linear(6, 8), nn.Linear(8, 2)), shape=(2, 5, 6), channels=8, notes=["channel_stats"]),  # RMSNorm as tensor ops
    Case("statistic", lambda: Between(lambda m, y: (y - y.mean(1, keepdim=True)) / (y.var(1, keepdim=True, unbiased=False) + 1e-5).sqrt(), conv(), conv(8, 2)), channels=8, notes=["channel_stats"]),  # LayerNorm as tensor ops
    Case("scaled_dot_product_attention", lambda: Between(gqa, nn.Linear(6, 8), nn.Linear(16, 2)), shape=(2, 5, 6), channels=2, center="extra.q"),
    Case("scaled_dot_product_attention", lambda: Between(mqa, nn.Linear(6, 8), nn.Linear(16, 2)), shape=(2, 5, 6), center="extra.q", blocked="query heads sharing one key/value head"),
    Case("statistic", lambda: Between(lambda m, y: y.mean(1, keepdim=True), conv(), conv(1, 2)), blocked="not applied back to them"),  # kv heads, each with the query heads reading it
    Case("along", lambda: Between(lambda m, y: y.softmax(-1) + y.cumsum(2), conv(), conv(8, 2)), channels=8),
    Case("normalize", lambda: Between(lambda m, y: F.normalize(F.relu(y)), conv(), nn.Sequential(conv(8, 4), conv(4, 2))), channels=8, notes=["masked_contraction"]),  # zeros leave a p-norm alone
    Case("normalize", lambda: Between(lambda m, y: F.normalize(y, p=0.0), conv(), conv(8, 2)), blocked="mixed by 'normalize' with p=0.0"),
    Case("output", lambda: Between(lambda m, y: y, conv()), blocked="reaches the model output"),
    Case("roi_pool", lambda: Between(lambda m, y: torchvision.ops.roi_align(y, rois(), 2) + torchvision.ops.roi_pool(y, rois(), 2), conv(), conv(8, 2)), channels=8),
    Case("ps_roi_pool", lambda: Between(lambda m, y: torchvision.ops.ps_roi_align(y, rois(), 2) + torchvision.ops.ps_roi_pool(y, rois(), 2), conv(), conv(2, 2)), channels=2),  # 4 input channels per output channel
    Case("nms", lambda: Between(lambda m, y: y[torchvision.ops.nms(m.extra["box"](y), torch.arange(5.0), 0.5)], nn.Linear(6, 8), nn.Linear(8, 2)), shape=(5, 6), channels=8),
    Case("nms", lambda: Between(lambda m, y: y[torchvision.ops.nms(m.extra["box"](y), torch.arange(5.0), 0.5)], nn.Linear(6, 8), nn.Linear(8, 2)), shape=(5, 6), center="extra.box", blocked="box coordinates read by 'nms'"),
    Case("setitem", lambda: Between(lambda m, y: rows_written(y), conv(), conv(8, 2)), channels=8),
    Case("view_write", lambda: Between(lambda m, y: written_through_a_view(y), conv(), conv(8, 2)), channels=8),
    Case("uniform_factory", lambda: Between(lambda m, y: m.extra["pool"]({"0": y, "1": F.avg_pool2d(y, 2)}, [rois()[:, 1:]], [(12, 12)]), conv(), conv(8, 2)), channels=8),  # MultiScaleRoIAlign's zeros take the input's channels
]


def rois() -> torch.Tensor:
    """Two boxes (batch index, x1, y1, x2, y2) in a 6×6 map."""
    return torch.tensor([[0, 0.0, 0.0, 4.0, 4.0], [1, 1.0, 1.0, 5.0, 5.0]])


def rows_written(y: torch.Tensor) -> torch.Tensor:
    """Rows of a buffer written through an index tensor, as ``MultiScaleRoIAlign`` fills its result."""
    out = torch.zeros_like(y)
    out[torch.tensor([1, 0])] = y * 2
    return out


def written_through_a_view(y: torch.Tensor) -> torch.Tensor:
    """An in-place op on a view changes its base (Swin V2 zeroes its key bias this way)."""
    y = y.clone()
    y[:, :, 1:].mul_(2)
    return y


def gqa(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: 4 query heads read 2 key/value heads, 4 dims each."""
    q, k, v = (m.extra[name](y).unflatten(-1, (-1, 4)).transpose(1, 2) for name in "qkv")
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2).flatten(2)


def mqa(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """Multi-query attention: 4 query heads read one key/value head."""
    q = m.extra["q"](y).unflatten(-1, (-1, 4)).transpose(1, 2)
    k, v = (m.extra[name](y)[:, None] for name in ("k1", "v1"))
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2).flatten(2)


class AddMM(nn.Module):
    """``bias + y @ w`` (Hugging Face's Conv1D) with raw parameters."""

    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.randn(8, 4)), nn.Parameter(torch.randn(4))

    def forward(self, y):
        return torch.addmm(self.b, y, self.w)


class MatMulParam(nn.Module):
    """``y @ w`` with a raw parameter: the parameter acts as a linear layer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 4))

    def forward(self, y):
        return torch.matmul(y, self.w)


class KeepHalf(nn.Module):
    def forward(self, y):
        out = torch.zeros_like(y)
        out[:, :, :3] = y[:, :, :3]
        return out


EXTRAS = {"act": lambda: nn.PReLU(8), "proj": MatMulParam, "addmm": AddMM, "mha": lambda: nn.MultiheadAttention(8, 2, batch_first=True),
          "bn": lambda: nn.BatchNorm2d(8), "gn": lambda: nn.GroupNorm(4, 8), "ln": lambda: nn.LayerNorm(8),
          "keep": KeepHalf, "c": lambda: nn.Conv1d(3, 8, 1),
          "q": lambda: nn.Linear(8, 16), "k": lambda: nn.Linear(8, 8), "v": lambda: nn.Linear(8, 8),
          "k1": lambda: nn.Linear(8, 4), "v1": lambda: nn.Linear(8, 4),
          "lstm": lambda: nn.LSTM(8, 5, batch_first=True, bidirectional=True), "cell": lambda: nn.LSTMCell(8, 5),
          "box": lambda: nn.Linear(8, 4), "pool": lambda: torchvision.ops.MultiScaleRoIAlign(["0", "1"], 2, 2)}


def build(case: Case) -> nn.Module:
    model = case.model()
    for key, make in EXTRAS.items():
        model.extra[key] = make()
    if case.center == "extra.c":  # conv1d inside fn: pre is the identity
        model.pre = nn.Identity()
        fn = model.fn
        model.fn = lambda m, y: fn(m, m.extra["c"](y.flatten(2)).unflatten(2, (6, 6)))
    return model.eval()


@pytest.mark.parametrize("case", CASES, ids=[f"{c.rule}-{i}" for i, c in enumerate(CASES)])
def test_rule(case):
    model = build(case)
    shape = case.shape
    x = torch.randint(0, 10, shape) if case.rule == "embedding" else torch.randn(shape)
    groups = analyse(model, x)
    group = groups[case.center]
    if case.blocked:
        assert not group.prunable and any(case.blocked in r for r in group.reasons), group.reasons
        return
    assert group.prunable, group.reasons
    if case.channels is not None:
        assert group.channels == case.channels
    assert group.notes == case.notes
    assert assert_no_influence(model, x, groups) > 0


def test_every_rule_has_a_case():
    rules = {registry.rule_for(op).__name__ for op in registry.registered_ops()}
    assert rules - {c.rule for c in CASES} == set()
