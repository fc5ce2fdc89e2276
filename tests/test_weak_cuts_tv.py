"""Video, optical-flow and diffusion models whose biggest group used to stay whole (issue 16),
each mechanism on a small hand-written module, pruned exactly (masked ≡ applied):

* a block that checks its input width against an attribute (diffusers' ``Upsample2D``:
  ``assert hidden_states.shape[1] == self.channels``);
* whole heads merged back with a head dim that a shared pooling conv labels (MViT), and
  both left whole when that head dim could prune on its own;
* a single head kept whole as one channel, not split along q/k/v (MViT's first block);
* split sizes held one by one in the attributes of the module or its parts (RAFT's
  hidden state and context), each piece keeping its own share.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruneconf.recipe.load import Recipe, Settings

from helpers import analyse, assert_no_influence, prune_exactly


class Upsample(nn.Module):
    """diffusers' ``Upsample2D``: the width is checked, and no op of its own has that size
    when it calls only a child (``Downsample2D``)."""

    def __init__(self, channels: int, interpolate: bool = True) -> None:
        super().__init__()
        self.channels, self.interpolate = channels, interpolate
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[1] == self.channels
        return self.conv(F.interpolate(x, scale_factor=2.0) if self.interpolate else x)


def test_a_block_checking_its_input_width_learns_the_new_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Upsample(8), nn.ReLU(),
                          Upsample(8, interpolate=False), nn.ReLU(), nn.Conv2d(8, 2, 1))
    pruned = prune_exactly(model, torch.randn(2, 3, 8, 8))
    assert not pruned.pruner.dropped
    assert model[2].channels == model[0].out_channels < 8
    assert model[4].channels == model[2].conv.out_channels < 8


class PooledAttention(nn.Module):
    """MViT's attention in small: q, k, v split off one projection into heads, the values
    pooled by a depthwise conv over the head dim that all heads share."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.output_dim = heads, dim // heads, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pool = nn.Conv1d(self.head_dim, self.head_dim, 3, padding=1, groups=self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        v = self.pool(v.reshape(B * self.heads, N, self.head_dim).transpose(1, 2))
        v = v.transpose(1, 2).reshape(B, self.heads, N, self.head_dim)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.output_dim))  # MViT: mvit.py:318


def pooled_attention(heads: int, head_dim: int = 6) -> nn.Module:
    dim = heads * head_dim
    return nn.Sequential(nn.Linear(8, dim), PooledAttention(dim, heads), nn.GELU(), nn.Linear(dim, 3))


def test_whole_heads_merge_with_a_head_dim_that_stays_whole():
    torch.manual_seed(0)
    model, x = pooled_attention(heads=4), torch.randn(2, 6, 8)
    groups = analyse(model, x)
    heads = groups["1.qkv"]
    assert heads.prunable and heads.channels == 4  # one channel per head
    pruned = prune_exactly(model, x)
    assert not pruned.pruner.dropped
    assert model[1].heads == len(pruned.pruner.plan().kept["1.qkv"]) < 4
    assert model[1].pool.out_channels == model[1].head_dim == 6  # the shared head dim stays whole


class MixedHeadDim(PooledAttention):
    """The values' head dim mixed by a Linear of its own, which could prune it."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__(dim, heads)
        self.pool = nn.Linear(self.head_dim, self.head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ self.pool(v)).transpose(1, 2).reshape(B, N, self.output_dim))


def test_heads_merged_with_a_prunable_head_dim_stay_whole():
    """Channel ``(h, d)`` would go when head ``h`` or dim ``d`` goes: no group says that."""
    model = nn.Sequential(nn.Linear(8, 24), MixedHeadDim(24, 4), nn.GELU(), nn.Linear(24, 3))
    groups = analyse(model, torch.randn(2, 6, 8))
    for center in ("1.qkv", "1.pool"):
        assert not groups[center].prunable
        assert any(r.startswith("several channel dims merged by 'reshape'") for r in groups[center].reasons)


def test_a_single_head_is_one_channel_not_split_along_q_k_v():
    model, x = pooled_attention(heads=1), torch.randn(2, 6, 8)
    reasons = analyse(model, x)["1.qkv"].reasons
    assert reasons == ["a single channel once its couplings are resolved"]


class Update(nn.Module):
    """RAFT's update block in small: its recurrent unit's hidden size is an attribute."""

    def __init__(self, hidden: int, context: int) -> None:
        super().__init__()
        self.hidden_state_size = hidden
        self.gru = nn.Conv2d(hidden + context, hidden, 3, padding=1)
        self.head = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            h = torch.tanh(self.gru(torch.cat([h, context], 1))) + h
        return self.head(h)


class SplitContext(nn.Module):
    """RAFT's split of the context encoder's output into hidden state and context."""

    def __init__(self, hidden: int, context: int) -> None:
        super().__init__()
        self.context_encoder = nn.Conv2d(3, hidden + context, 3, padding=1)
        self.update_block = Update(hidden, context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.context_encoder(x)
        size = self.update_block.hidden_state_size
        rest = out.shape[1] - size
        if rest <= 0:
            raise ValueError("the context must not be empty")
        hidden, context = torch.split(out, [size, rest], dim=1)
        return self.update_block(torch.tanh(hidden), F.relu(context))


def test_split_sizes_held_by_a_part_of_the_module_follow_the_channels():
    torch.manual_seed(0)
    model, x = SplitContext(12, 8), torch.randn(2, 3, 8, 8)
    groups = analyse(model, x)
    assert groups["context_encoder"].prunable
    assert assert_no_influence(model, x, groups) > 0
    pruned = prune_exactly(model, x)
    assert not pruned.pruner.dropped
    kept = pruned.pruner.plan().kept["context_encoder"]
    assert model.update_block.hidden_state_size == int((kept < 12).sum()) == 6  # each piece its half
    assert model.context_encoder.out_channels - model.update_block.hidden_state_size == 4


def quiet_context(hidden: int, context: int) -> SplitContext:
    """A split whose context channels all score below every hidden one: ranked as one group,
    the context would lose every channel."""
    model = SplitContext(hidden, context)
    with torch.no_grad():
        model.context_encoder.weight[hidden:] *= 1e-3
        model.update_block.gru.weight[:, hidden:] *= 1e-3
    return model


@pytest.mark.parametrize("mode", ["uniform", "global"])
def test_each_held_piece_keeps_its_own_share(mode):
    torch.manual_seed(0)
    model, x = quiet_context(12, 8), torch.randn(2, 3, 8, 8)
    pieces = analyse(model, x)["context_encoder"].pieces
    assert pieces.tolist() == [0] * 12 + [1] * 8
    pruned = prune_exactly(model, x, Recipe(path="<test>", settings=Settings(default_sparsity=0.5, mode=mode),
                                            sparsity={}))
    assert not pruned.pruner.dropped
    hidden = model.update_block.hidden_state_size
    assert (hidden, model.context_encoder.out_channels - hidden) == (6, 4)


def test_a_held_piece_is_never_emptied():
    torch.manual_seed(0)
    model, x = quiet_context(12, 8), torch.randn(2, 3, 8, 8)
    pruned = prune_exactly(model, x, {"sparsity": 0.95})
    assert not pruned.pruner.dropped
    assert (model.update_block.hidden_state_size, model.context_encoder.out_channels) == (1, 2)


class TwoSplits(nn.Module):
    """One conv's output split twice, at two held sizes: three cells, 6, 6 and 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.head = 12, 6
        self.conv = nn.Conv2d(3, 20, 3, padding=1)
        self.a, self.b = nn.Conv2d(20, 4, 1), nn.Conv2d(20, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        p, q = torch.split(y, [self.first, y.shape[1] - self.first], 1)
        r, s = torch.split(y, [self.head, y.shape[1] - self.head], 1)
        return self.a(torch.cat([torch.tanh(p), F.relu(q)], 1)) + self.b(torch.cat([F.relu(r), torch.sigmoid(s)], 1))


def test_two_splits_of_one_group_keep_the_share_of_every_cell_they_agree_on():
    torch.manual_seed(0)
    model, x = TwoSplits(), torch.randn(2, 3, 8, 8)
    assert analyse(model, x)["conv"].pieces.tolist() == [0] * 6 + [1] * 6 + [2] * 8
    pruned = prune_exactly(model, x)
    assert not pruned.pruner.dropped
    assert (model.head, model.first, model.conv.out_channels) == (3, 6, 10)


def test_equal_held_pieces_shrink_alike():
    torch.manual_seed(0)
    model, x = SplitContext(10, 10), torch.randn(2, 3, 8, 8)
    pruned = prune_exactly(model, x)
    assert not pruned.pruner.dropped
    assert 2 * model.update_block.hidden_state_size == model.context_encoder.out_channels < 20
