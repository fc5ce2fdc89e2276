"""Hierarchical and hybrid vision transformers (timm's Swin, LeViT, EdgeNeXt) whose biggest
group used to stay whole, now pruned exactly (masked ≡ applied), each mechanism in a small
module of its own:

* Swin's ``PatchMerging`` merges ``(2, 2, C)`` into ``4C`` after window attention added a
  fixed shift mask to its scores, so the token dims carry (blocked) labels: the merge repeats
  the channel dim's labels over them instead of blocking the stream;
* LeViT keeps ``attention_biases[:, attention_bias_idxs]`` in a cache for eval-mode forwards:
  a trace or a shrink drops it (the module's own ``train()``), so the heads prune;
* LeViT's last stage has ``num_heads == key_dim``: a literal size that shrinks in one dim and
  stays in another updates only the head count;
* EdgeNeXt's ``chunk(3)`` of 88 channels gives 30, 30, 28: pieces coupled so that the
  model's own ``chunk`` still cuts the kept channels apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly


class MaskedWindowMerge(nn.Module):
    """One window of Swin attention (scores plus a fixed mask buffer), then PatchMerging."""

    def __init__(self, c: int = 8, side: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, c, 1)
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.register_buffer("mask", torch.randn(side * side, side * side))
        self.norm, self.reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        B, H, W, C = x.shape
        t = x.reshape(B, H * W, C)
        q, k, v = self.qkv(t).chunk(3, -1)
        t = t + self.proj((q @ k.transpose(-2, -1) + self.mask).softmax(-1) @ v)
        x = t.reshape(B, H // 2, 2, W // 2, 2, C).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


def test_patch_merging_after_masked_attention_prunes_the_stream():
    torch.manual_seed(0)
    model, x = MaskedWindowMerge(), torch.randn(2, 3, 4, 4)
    groups = analyse(model, x)
    stream = groups["embed"]
    assert stream.prunable and stream.channels == 8
    columns = next(m for m in stream.members if m.param == "reduction.weight")
    assert columns.size == 32 and sorted(set(columns.channels.tolist())) == list(range(8))
    assert assert_no_influence(model, x, groups) > 0
    prune_exactly(model, x)
    assert model.embed.out_channels < 8 and model.reduction.in_features == 4 * model.embed.out_channels


class CachedBiasAttention(nn.Module):
    """LeViT's attention in miniature: a bias cache for eval mode, emptied by ``train()``,
    and as many heads as dims per key (LeViT-128S's last stage: 16 and 16)."""

    def __init__(self, dim: int = 16, heads: int = 4, tokens: int = 9) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = heads, 4, 8
        self.qkv = nn.Linear(dim, heads * (2 * self.key_dim + self.val_dim))
        self.proj = nn.Linear(heads * self.val_dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, tokens))
        self.register_buffer("attention_bias_idxs", torch.randint(0, tokens, (tokens, tokens)))
        self.attention_bias_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        self.attention_bias_cache = {}
        return self

    def biases(self) -> torch.Tensor:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        if "cpu" not in self.attention_bias_cache:
            self.attention_bias_cache["cpu"] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache["cpu"]

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, self.num_heads, -1).split([self.key_dim, self.key_dim, self.val_dim], 3)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        attn = (q @ k.transpose(-2, -1) + self.biases()).softmax(-1)
        return x + self.proj(F.hardswish((attn @ v).transpose(1, 2).reshape(B, N, -1)))


def test_a_cached_bias_does_not_hide_its_parameter():
    torch.manual_seed(0)
    model, x = CachedBiasAttention().eval(), torch.randn(2, 9, 16)
    model(x)  # an eval forward fills the cache, as any use before pruning would
    assert model.attention_bias_cache
    heads = analyse(model, x)["qkv"]
    assert heads.prunable and heads.channels == 4
    assert any(m.param == "attention_biases" for m in heads.members)


def test_heads_prune_when_the_head_count_equals_the_key_dim():
    torch.manual_seed(0)
    model, x = CachedBiasAttention(), torch.randn(2, 9, 16)
    prune_exactly(model, x)  # the cache is rebuilt from the shrunk biases
    assert model.num_heads == 2 and model.key_dim == 4 and model.val_dim == 8
    assert model.attention_biases.shape[0] == 2 and model.proj.in_features == 16


class UnevenChunk(nn.Module):
    """EdgeNeXt's multi-scale split: ``chunk(3)`` of 14 channels is 5, 5 and 4."""

    def __init__(self, c: int = 14) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 1)
        width = -(-c // 3)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(2))
        self.head = nn.Conv2d(c, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        pieces = x.chunk(3, 1)
        first = self.convs[0](pieces[0])
        second = self.convs[1](first + pieces[1])
        return self.head(x + torch.cat([first, second, pieces[2]], 1))


def test_an_uneven_chunk_keeps_its_pieces_apart():
    torch.manual_seed(0)
    model, x = UnevenChunk(), torch.randn(2, 3, 6, 6)
    groups = analyse(model, x)
    stream = groups["stem"]
    # four positions every piece has, one more that the two equal pieces have
    assert stream.prunable and stream.channels == 5
    assert assert_no_influence(model, x, groups) > 0
    prune_exactly(model, x)
    kept = model.stem.out_channels
    assert kept < 14 and [p.shape[1] for p in torch.zeros(1, kept).chunk(3, 1)] == [model.convs[0].in_channels] * 2 + [
        kept - 2 * model.convs[0].in_channels]
