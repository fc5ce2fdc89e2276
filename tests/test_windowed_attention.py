"""Windowed transformers whose attention heads used to stay whole, now pruned exactly
(masked ≡ applied), on small hand-written modules that show each mechanism:

* a bias written through a view (torchvision's Swin V2 zeroes its key bias with
  ``qkv_bias.clone()[C:2 * C].zero_()``): the base keeps its channels, and a slice on the
  boundaries of q, k and v, which lose the same heads, stays prunable;
* q, k and v chunked from one projection and each reshaped into heads (torchvision's
  MaxViT): every reshape of the coupled pieces keeps whole heads, not only the last one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import trace
from pruneconf.analysis import total_macs


class CosineAttention(nn.Module):
    """Swin V2's attention over one window: cosine similarity scaled per head, a
    per-head bias from a small MLP, and a key bias kept at zero through a view."""

    def __init__(self, dim: int = 16, heads: int = 4, tokens: int = 6, read_width: bool = True) -> None:
        super().__init__()
        self.num_heads, self.read_width = heads, read_width
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.rand(heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, heads, bias=False))
        self.register_buffer("coords", torch.randn(tokens * tokens, 2))

    def forward(self, x):
        B, N, C = x.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        bias[length:2 * length].zero_()
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=4.0).exp()
        table = self.cpb_mlp(self.coords).view(-1, self.num_heads)
        attn = attn + 16 * torch.sigmoid(table.view(N, N, -1).permute(2, 0, 1))
        x = attn.softmax(-1).matmul(v).transpose(1, 2).reshape(B, N, C if self.read_width else -1)
        return self.proj(x)


def windowed(attention: nn.Module, dim: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(5, dim), nn.GELU(), attention, nn.GELU(), nn.Linear(dim, 3))


def test_a_bias_written_through_a_view_keeps_its_heads_prunable():
    torch.manual_seed(0)
    model, x = windowed(CosineAttention()), torch.randn(2, 6, 5)
    groups = analyse(model, x)
    [heads] = groups.groups_of_layer("2.qkv")
    assert heads.prunable and heads.channels == 4, heads.reasons
    # the reshape back to the width read from the input (``reshape(B, N, C)``) ties the
    # stream ("0") to the heads: it loses whole head-sized blocks with them
    assert {"0", "2.qkv", "2.logit_scale", "2.cpb_mlp.2", "2.proj"} <= set(heads.layers)
    assert assert_no_influence(model, x, groups) > 0
    before = total_macs(trace(model, x))
    prune_exactly(model, x)
    attention = model[2]
    assert attention.num_heads == 2 and attention.qkv.out_features == 3 * 8
    assert total_macs(trace(model, x)) < 0.5 * before


def test_a_slice_on_sections_that_shrink_differently_still_blocks():
    class Uncoupled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 12), nn.Linear(4, 3)

        def forward(self, x):
            return self.b(self.a(x)[:, 4:8])  # the middle of three sections that are never coupled

    groups = analyse(Uncoupled(), torch.randn(2, 4))
    assert not groups["a"].prunable
    assert any("constant indices in 'getitem'" in r for r in groups["a"].reasons), groups["a"].reasons


class ChunkedAttention(nn.Module):
    """MaxViT's attention: q, k and v chunked from one projection, each reshaped into
    ``(n_heads, head_dim)``, contracted by ``einsum``, with a relative-position bias
    table indexed per head; the heads merge back to the width of the input."""

    def __init__(self, dim: int = 24, head_dim: int = 4, tokens: int = 6) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.scale = dim // head_dim, head_dim, dim ** -0.5
        self.to_qkv, self.merge = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(tokens * tokens, self.n_heads))
        self.register_buffer("index", torch.randperm(tokens * tokens))

    def forward(self, x):
        B, P, D = x.shape
        q, k, v = torch.chunk(self.to_qkv(x), 3, dim=-1)
        q, k, v = (t.reshape(B, P, self.n_heads, self.head_dim).permute(0, 2, 1, 3) for t in (q, k, v))
        dot = torch.einsum("bhid,bhjd->bhij", q, k * self.scale)
        bias = self.table[self.index].view(P, P, -1).permute(2, 0, 1)
        out = torch.einsum("bhij,bhjd->bhid", F.softmax(dot + bias, dim=-1), v)
        return self.merge(out.permute(0, 2, 1, 3).reshape(B, P, D))


def test_heads_chunked_from_one_projection_prune_whole():
    torch.manual_seed(0)
    model, x = windowed(ChunkedAttention(), 24), torch.randn(2, 6, 5)
    groups = analyse(model, x)
    [heads] = groups.groups_of_layer("2.to_qkv")
    assert heads.prunable and heads.channels == 6, heads.reasons
    assert assert_no_influence(model, x, groups) > 0
    before = total_macs(trace(model, x))
    prune_exactly(model, x)
    attention = model[2]
    assert attention.n_heads == 3 and attention.head_dim == 4 and attention.to_qkv.out_features == 3 * 12
    assert total_macs(trace(model, x)) < 0.5 * before


def test_a_stream_and_heads_tied_by_a_ratio_prune_together():
    """Three heads of 4 over a stream of 12, tied only by ``C // num_heads`` (the heads merge
    back with ``-1``, so no size read from the stream ties them in analysis): halving the
    stream (6) and keeping 2 heads (8) cannot run, so the dry run drops both, then tries them
    together at one share, two thirds: 8 stream channels over 2 heads of 4."""
    torch.manual_seed(0)
    model, x = windowed(CosineAttention(dim=12, heads=3, read_width=False), 12), torch.randn(2, 6, 5)
    pruned = prune_exactly(model, x)
    assert pruned.pruner.dropped == {}
    assert model[0].out_features == 8 and model[2].num_heads == 2 and model[2].qkv.out_features == 3 * 8
