"""Sizes the model's code computes from head counts: a fused q/k/v projection sliced at
offsets from the config every layer shares (Phi-3), and a zero tensor built with the head
count (T5's cross-attention position bias). Heads prune whole, the counts update per layer
(a layer reading the shared config gets its own :class:`LayerConfig`), and where the code
writes the number itself the dry run leaves the group whole and says why.
"""
from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse
from pruneconf import Pruner
from pruneconf.apply.layer_config import LayerConfig

HEADS, KV_HEADS, HEAD_DIM, DIM = 4, 2, 8, 32


class FusedAttention(nn.Module):
    """Phi-3's attention: one ``qkv`` projection sliced at ``config.num_attention_heads *
    head_dim`` and ``self.num_key_value_heads * head_dim`` (or at literal offsets), grouped-
    query attention, heads inferred by ``view(..., -1, head_dim)``."""

    def __init__(self, config, literal: bool = False):
        super().__init__()
        self.config, self.literal = config, literal
        self.head_dim, self.num_key_value_heads = HEAD_DIM, config.num_key_value_heads
        self.qkv = nn.Linear(DIM, (HEADS + 2 * KV_HEADS) * HEAD_DIM, bias=False)
        self.o = nn.Linear(HEADS * HEAD_DIM, DIM, bias=False)

    def forward(self, x):
        qkv = self.qkv(x)
        q_end = 32 if self.literal else self.config.num_attention_heads * self.head_dim
        kv = 16 if self.literal else self.num_key_value_heads * self.head_dim
        q, k, v = qkv[..., :q_end], qkv[..., q_end:q_end + kv], qkv[..., q_end + kv:]
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


class Stack(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.config = types.SimpleNamespace(num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, name="tiny")
        self.embed = nn.Linear(10, DIM)
        self.layers = nn.ModuleList([layer(self.config) for _ in range(2)])
        self.head = nn.Linear(DIM, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


def pruned(model, groups=None):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 10)
    pruner = Pruner(model, x, {"sparsity": 0.5, "groups": groups or {}})
    pruner.register_masks()
    with torch.no_grad():
        masked = model(x)
    pruner.apply_masks()  # raises unless the shrunk model computes the masked one's outputs
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=0)
    return pruner


def test_fused_qkv_sliced_at_head_count_offsets_loses_whole_heads():
    torch.manual_seed(0)
    model = Stack(FusedAttention)
    group = analyse(model, torch.randn(2, 6, 10))["layers.0.qkv"]
    assert group.prunable and group.channels == KV_HEADS  # a key/value head with its query heads
    pruner = pruned(model, {"layers.1.qkv": 0.0})
    assert pruner.dropped == {}
    first, second = model.layers
    assert (first.qkv.out_features, first.o.in_features, first.num_key_value_heads) == (32, 16, 1)
    assert isinstance(first.config, LayerConfig) and first.config.num_attention_heads == 2
    assert first.config.name == "tiny" and first.config.shared is model.config
    assert second.config is model.config and model.config.num_attention_heads == HEADS
    first.config.name = "renamed"  # anything but the layer's sizes is the shared config's
    assert model.config.name == "renamed"


def test_a_pruned_layer_config_survives_copies():
    model = Stack(FusedAttention)
    pruned(model)
    clone = copy.deepcopy(model)
    assert clone.layers[0].config.num_attention_heads == 2
    assert clone.layers[0].config.shared is clone.config is not model.config
    x = torch.randn(2, 6, 10)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_fused_qkv_sliced_at_literal_offsets_is_left_whole_with_the_reason():
    model = Stack(lambda config: FusedAttention(config, literal=True))
    pruner = pruned(model)
    assert set(pruner.dropped) == {"layers.0.qkv", "layers.1.qkv"}
    assert all("breaks the model" in why for why in pruner.dropped.values())
    assert model.layers[0].qkv.out_features == 64 and model.embed.out_features == 16


class ZeroBiasAttention(nn.Module):
    """T5's cross-attention: a zero position bias of ``self.n_heads`` heads (or of a literal
    count) as the attention mask."""

    def __init__(self, config, literal: bool = False):
        super().__init__()
        self.n_heads, self.literal = HEADS, literal
        self.q, self.k, self.v = (nn.Linear(DIM, HEADS * HEAD_DIM) for _ in range(3))
        self.o = nn.Linear(HEADS * HEAD_DIM, DIM)

    def forward(self, x):
        shape = (*x.shape[:-1], -1, HEAD_DIM)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q, self.k, self.v))
        bias = torch.zeros((1, 4 if self.literal else self.n_heads, x.shape[1], x.shape[1]))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.o(out.transpose(1, 2).reshape(*x.shape[:-1], -1))


@pytest.mark.parametrize("literal", [False, True])
def test_a_zero_tensor_sized_by_the_head_count_follows_the_heads(literal):
    model = Stack(lambda config: ZeroBiasAttention(config, literal))
    pruner = pruned(model)
    if literal:
        assert set(pruner.dropped) == {"layers.0.q", "layers.1.q"}
        assert model.layers[0].n_heads == HEADS
    else:
        assert pruner.dropped == {} and model.layers[0].n_heads == 2 and model.layers[0].q.out_features == 16


class SectionsNotHeads(nn.Module):
    """Tiled slices reshaped into ``(2, 8)`` that nothing keeps whole: the reshape keeps the
    inner dim prunable, so a section could lose part of a "head" and its offsets would move."""

    def __init__(self):
        super().__init__()
        self.fused, self.out = nn.Linear(10, 32), nn.Linear(16, 3)

    def forward(self, x):
        y = self.fused(x)
        a, b = (t.reshape(*x.shape[:-1], 2, 8) for t in (y[..., :16], y[..., 16:]))
        return self.out((a * b).flatten(-2))


def test_sections_not_pruned_in_whole_heads_stay_whole_with_the_reason():
    group = analyse(SectionsNotHeads(), torch.randn(2, 10))["fused"]
    assert not group.prunable and any("not pruned in whole heads" in r for r in group.reasons), group.reasons
