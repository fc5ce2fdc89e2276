"""The hard operators, one tiny model each: the grouping we expect, then real pruning.

Every case states its prunable groups exactly (center -> channel count and member layers)
and the groups that must stay whole with the reason. Then the model is pruned for real:
sparsity 0 gives the original bit for bit, sparsity 0.5 gives a model whose outputs equal
the masked model's (``apply_masks`` also checks this and rolls back otherwise), with the
same output shape and, where anything is prunable, fewer MACs.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import trace
from pruneconf.analysis import total_macs


class Net(nn.Module):
    """``fn(self, x)`` over the given layers and raw parameters."""

    def __init__(self, fn: Callable, **parts):
        super().__init__()
        self.fn = fn
        for name, part in parts.items():
            if isinstance(part, torch.Tensor):
                self.register_parameter(name, nn.Parameter(part))
            else:
                self.add_module(name, part)

    def forward(self, x):
        return self.fn(self, x)


def chain(*middle: nn.Module, a: nn.Module, b: nn.Module) -> Net:
    """``b(middle(a(x)))``: ``a``'s channels flow through the op under test into ``b``."""
    return Net(lambda m, x: m.b(m.mid(m.a(x))), a=a, mid=nn.Sequential(*middle), b=b)


def conv(c_in: int, c_out: int, k: int = 3, dims: int = 2, **kw) -> nn.Module:
    return getattr(nn, f"Conv{dims}d")(c_in, c_out, k, padding=k // 2, **kw)


def two_sources(fn: Callable, c_mid: int, **extra) -> Net:
    """``c(fn(cat[a(x), b(x)]))``, plus ``d`` reading the whole concatenation."""
    return Net(lambda m, x: (lambda y: m.c(fn(m, y)) + m.d(y).mean())(torch.cat([m.a(x), m.b(x)], 1)),
               a=conv(3, 8), b=conv(3, 8), c=conv(c_mid, 4, 1), d=conv(16, 4, 1), **extra)


def shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle written out: view, transpose, view."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


IMG, SEQ, VOL = (2, 3, 8, 8), (2, 3, 16), (2, 3, 4, 6, 6)


@dataclasses.dataclass
class Op:
    name: str
    build: Callable[[], nn.Module]
    groups: dict[str, tuple[int, set[str]]]  # prunable: center -> (channels, member layers)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)  # center -> reason substring
    shape: tuple = IMG
    tokens: bool = False  # integer inputs (embedding)


OPS = [
    # -- norms ------------------------------------------------------------------------------
    Op("instance_norm2d", lambda: chain(nn.InstanceNorm2d(8, affine=True, track_running_stats=True), a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "mid.0", "b"})}),
    Op("instance_norm1d", lambda: chain(nn.InstanceNorm1d(8), a=conv(3, 8, dims=1), b=conv(8, 4, 1, dims=1)),
       {"a": (8, {"a", "b"})}, shape=SEQ),
    Op("batch_norm1d_features", lambda: Net(lambda m, x: m.b(F.relu(m.n(m.a(x.flatten(1))))),
                                            a=nn.Linear(192, 8), n=nn.BatchNorm1d(8), b=nn.Linear(8, 4)),
       {"a": (8, {"a", "n", "b"})}),
    Op("batch_norm1d_sequence", lambda: chain(nn.BatchNorm1d(8), nn.ReLU(), a=conv(3, 8, dims=1), b=conv(8, 4, 1, dims=1)),
       {"a": (8, {"a", "mid.0", "b"})}, shape=SEQ),
    Op("batch_norm3d", lambda: chain(nn.BatchNorm3d(8), nn.ReLU(), a=conv(3, 8, dims=3), b=conv(8, 4, 1, dims=3)),
       {"a": (8, {"a", "mid.0", "b"})}, shape=VOL),
    # -- convolutions -------------------------------------------------------------------------
    Op("conv1d_conv_transpose1d", lambda: chain(nn.ConvTranspose1d(8, 6, 2, stride=2), a=conv(3, 8, dims=1), b=conv(6, 4, 1, dims=1)),
       {"a": (8, {"a", "mid.0"}), "mid.0": (6, {"mid.0", "b"})}, shape=SEQ),
    Op("conv_transpose2d_grouped", lambda: chain(nn.ConvTranspose2d(8, 12, 2, stride=2, groups=4), a=conv(3, 8), b=conv(12, 4, 1)),
       {"a": (4, {"a", "mid.0", "b"})}),  # a group channel: 2 inputs and the 3 outputs they feed
    Op("conv3d_conv_transpose3d", lambda: chain(nn.ConvTranspose3d(8, 6, 2, stride=2), a=conv(3, 8, dims=3), b=conv(6, 4, 1, dims=3)),
       {"a": (8, {"a", "mid.0"}), "mid.0": (6, {"mid.0", "b"})}, shape=VOL),
    Op("depthwise_multiplier", lambda: chain(conv(8, 16, groups=8), nn.BatchNorm2d(16), a=conv(3, 8), b=conv(16, 4, 1)),
       {"a": (8, {"a", "mid.0", "mid.1", "b"})}),  # each channel feeds 2 depthwise outputs
    # -- reshuffling ------------------------------------------------------------------------
    Op("pixel_shuffle", lambda: chain(nn.PixelShuffle(2), a=conv(3, 16), b=conv(4, 4, 1)),
       {"a": (4, {"a", "b"})}),  # 4 sub-pixel channels make one output channel
    Op("pixel_unshuffle", lambda: chain(nn.PixelUnshuffle(2), a=conv(3, 8), b=conv(32, 4, 1)),
       {"a": (8, {"a", "b"})}),
    Op("channel_shuffle_view", lambda: Net(lambda m, x: m.b(shuffle(m.a(x), 2)), a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "b"})}),  # moved, not coupled: b's columns follow the shrunk shuffle
    Op("channel_shuffle_op", lambda: chain(nn.ChannelShuffle(2), a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "b"})}),
    Op("pad_channels", lambda: Net(lambda m, x: m.b(F.pad(m.a(x), (0, 0, 0, 0, 2, 2))), a=conv(3, 8), b=conv(12, 4, 1)),
       {"a": (8, {"a", "b"})}),  # the 4 padded channels are constants, b's columns for them stay
    Op("pad_crop_channels", lambda: two_sources(lambda m, y: F.pad(y, (0, 0, 0, 0, -8, 0)), 8),
       {"b": (8, {"b", "c", "d"})}, blocked={"a": "cropped by 'pad'"}),
    Op("slice_tail", lambda: two_sources(lambda m, y: y[:, 8:], 8),
       {"b": (8, {"b", "c", "d"})}, blocked={"a": "constant indices in 'getitem'"}),
    Op("slice_head", lambda: two_sources(lambda m, y: y[:, :8], 8),
       {"b": (8, {"b", "d"})}, blocked={"a": "constant indices in 'getitem'"}),
    Op("slice_from_the_back", lambda: two_sources(lambda m, y: y[:, :-8], 8),
       {"a": (8, {"a", "c", "d"})}, blocked={"b": "constant indices in 'getitem'"}),
    Op("slice_middle", lambda: Net(lambda m, x: m.b(m.a(x)[:, 2:-2]), a=conv(3, 8), b=conv(4, 4, 1)),
       {}, blocked={"a": "constant indices in 'getitem'"}),
    Op("slice_step", lambda: two_sources(lambda m, y: y[:, ::2], 8),
       {}, blocked={"a": "with a step", "b": "with a step"}),
    Op("cat_spatial", lambda: Net(lambda m, x: m.c(torch.cat([m.a(x), m.b(x)], 2)), a=conv(3, 8), b=conv(3, 8), c=conv(8, 4, 1)),
       {"a": (8, {"a", "b", "c"})}),  # stacked along H: channel i of a and b is one channel
    Op("einsum_parameter", lambda: Net(lambda m, x: m.b(torch.einsum("bchw,oc->bohw", m.a(x), m.w)),
                                       a=conv(3, 8), w=torch.randn(6, 8), b=conv(6, 4, 1)),
       {"a": (8, {"a", "w"}), "w": (6, {"w", "b"})}),
    Op("einsum_activations", lambda: Net(lambda m, x: m.b(torch.einsum("bchw,bcij->bhwij", m.a(x), m.a(x)).flatten(3)),
                                         a=conv(3, 8), b=nn.Linear(64, 4)),
       {}, blocked={"a": "contracted by 'einsum' between two activations"}),
    Op("matmul_parameter", lambda: Net(lambda m, x: m.b((m.a(x).permute(0, 2, 3, 1) @ m.w).permute(0, 3, 1, 2)),
                                       a=conv(3, 8), w=torch.randn(8, 6), b=conv(6, 4, 1)),
       {"a": (8, {"a", "w"}), "w": (6, {"w", "b"})}),
    Op("where_per_channel", lambda: Net(lambda m, x: (lambda y: m.b(torch.where(y.mean((2, 3), keepdim=True) > 0, y, -y)))(m.a(x)),
                                        a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "b"})}),
    Op("where_parameter_gate", lambda: Net(lambda m, x: m.b(torch.where(m.gate > 0, m.a(x), 0.0)),
                                           a=conv(3, 8), gate=torch.randn(1, 8, 1, 1), b=conv(8, 4, 1)),
       {"a": (8, {"a", "gate", "b"})}),  # the gate is sliced with the channels it selects
    Op("layer_scale_parameter", lambda: Net(lambda m, x: m.b(m.a(x) * m.gamma.reshape(1, -1, 1, 1)),
                                            a=conv(3, 8), gamma=torch.rand(8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "gamma", "b"})}),
    Op("reduce_spatial", lambda: Net(lambda m, x: m.b(m.a(x).mean((2, 3)) + m.a(x).amax(-1).sum(-1)),
                                     a=conv(3, 8), b=nn.Linear(8, 4)),
       {"a": (8, {"a", "b"})}),
    Op("reduce_channels", lambda: Net(lambda m, x: m.b(m.a(x).sum(1, keepdim=True)), a=conv(3, 8), b=conv(1, 4, 1)),
       {}, blocked={"a": "reduced by 'sum'"}),
    Op("interpolate", lambda: Net(lambda m, x: m.b(F.interpolate(m.a(x), size=(12, 12), mode="bilinear")),
                                  a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "b"})}),
    Op("embedding_linear", lambda: nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)),
       {"0": (8, {"0", "1"}), "1": (6, {"1", "3"})}, blocked={"3": "reaches the model output"}, shape=(2, 5), tokens=True),
    Op("prelu_per_channel", lambda: chain(nn.PReLU(8), a=conv(3, 8), b=conv(8, 4, 1)),
       {"a": (8, {"a", "mid.0", "b"})}),
]


def example(op: Op) -> torch.Tensor:
    return torch.randint(0, 10, op.shape) if op.tokens else torch.randn(op.shape)


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_grouping(op):
    model, x = op.build().eval(), example(op)
    groups = analyse(model, x)
    found = {g.center: (g.channels, set(g.layers)) for g in groups.prunable}
    assert found == op.groups
    for center, reason in op.blocked.items():
        assert not groups[center].prunable and any(reason in r for r in groups[center].reasons), \
            groups[center].reasons
    if op.groups:
        assert assert_no_influence(model, x, groups) > 0


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_pruning(op):
    x = example(op)
    model = op.build()
    macs = total_macs(trace(model, x))
    prune_exactly(model, x)
    after = total_macs(trace(model, x))
    assert after < macs if op.groups else after == macs


def test_a_norm_without_tensors_learns_its_new_channel_count():
    """``InstanceNorm2d(8)`` (no affine, no running stats) holds its width only in
    ``num_features``: apply updates it, so PyTorch has nothing to warn about."""
    model = chain(nn.InstanceNorm2d(8), a=conv(3, 8), b=conv(8, 4, 1))
    prune_exactly(model, torch.randn(2, 3, 8, 8))
    assert model.mid[0].num_features == model.a.out_channels == 4
