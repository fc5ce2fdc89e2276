"""A reshape given a width the model's code read from another tensor's shape (timm's EVA,
CaiT, XCiT and PVT-v2 attention: ``B, N, C = x.shape`` … ``reshape(B, N, C)``).

After pruning, the code reads the input's new width, so the merged heads must have exactly
that many channels: the trace matches the size to the read (``pruneconf.trace.sizes``) and
the reshape's rule couples the two dims, so the stream loses whole head-sized blocks with
the heads. A size passed from an attribute (``self.attn_dim``, timm's ViT) is not coupled:
apply updates the attribute, and the stream and the heads prune apart.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, prune_exactly
from pruneconf import trace


class Attention(nn.Module):
    """Heads merged back with the width read from the input (``C``), or, with
    ``attribute``, with a width the module holds (``self.attn_dim``)."""

    def __init__(self, dim: int, heads: int, attribute: bool) -> None:
        super().__init__()
        self.num_heads, self.attribute = heads, attribute
        if attribute:
            self.attn_dim = dim
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        if self.attribute:
            return self.proj(y.reshape(B, N, self.attn_dim))
        return self.proj(y.reshape(B, N, C))


class Encoder(nn.Module):
    def __init__(self, attribute: bool, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(8, dim), nn.LayerNorm(dim)
        self.attn = nn.ModuleList(Attention(dim, heads, attribute) for _ in range(2))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                 for _ in range(2))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        for attn, mlp in zip(self.attn, self.mlp):
            x = x + attn(self.norm(x))
            x = x + mlp(x)
        return self.head(x.mean(1))


def centers(groups, layer: str) -> set[str]:
    """The groups ``layer``'s output channels (its weight's rows) belong to."""
    return {g.center for g in groups if any(m.param == f"{layer}.weight" and m.dim == 0 for m in g.members)}


def example() -> torch.Tensor:
    return torch.randn(2, 6, 8)


def test_the_read_width_couples_the_heads_with_the_stream():
    torch.manual_seed(0)
    model, x = Encoder(attribute=False), example()
    merge = next(attrs for node, attrs in trace(model, x).nodes(data=True)
                 if node.startswith("attn.0:reshape") and attrs["out_shapes"][0] == (2, 6, 32))
    assert [(ref.node, dim) for ref, dim in merge["sized_by"][2]] == [("norm", 2)]
    groups = analyse(model, x)
    assert centers(groups, "attn.0.qkv") == centers(groups, "attn.1.qkv") == {"embed"}
    assert groups["embed"].channels == 4  # one per head: the stream loses whole heads
    prune_exactly(model, x)
    assert model.embed.out_features == 16 and model.attn[0].num_heads == model.attn[1].num_heads == 2
    assert model.attn[0].qkv.out_features == 48


def test_a_width_passed_from_an_attribute_is_left_to_apply():
    torch.manual_seed(0)
    model, x = Encoder(attribute=True), example()
    groups = analyse(model, x)
    assert centers(groups, "attn.0.qkv") == {"attn.0.qkv"} and groups["attn.0.qkv"].channels == 4
    assert groups["embed"].channels == 32
    prune_exactly(model, x)
    assert model.embed.out_features == 16 and model.attn[0].attn_dim == model.attn[0].qkv.out_features // 3


def test_a_group_of_whole_heads_names_the_lines_that_fix_its_step():
    """At 0.5 a stream tied to 3 heads keeps 2 of 3: pruned by less than asked, and
    ``coarse_steps`` says why, with this file's lines (the heads' split, the width read)."""
    from pruneconf.groups.explain import channel_width, coarse_steps

    torch.manual_seed(0)
    model, x = Encoder(attribute=False, dim=24, heads=3), example()
    groups = analyse(model, x)
    stream = groups["embed"]
    assert (stream.channels, channel_width(stream)) == (3, 8)
    text = coarse_steps(stream, groups.graph)
    assert text.startswith("3 channels of 8 columns: whole heads, split at tests/test_read_sizes.py:")
    assert "a width read from a shape and reshaped to at tests/test_read_sizes.py:" in text
    assert coarse_steps(groups["mlp.0.0"], groups.graph) == ""  # one column per channel, nothing noted


def test_show_lists_the_groups_that_lose_whole_blocks(tmp_path, capsys):
    from pruneconf.cli import main

    net = tmp_path / "net.py"
    net.write_text("from test_read_sizes import Encoder\n\n\ndef build():\n"
                   "    return Encoder(attribute=False, dim=24, heads=3)\n")
    recipe = tmp_path / "recipe.yaml"
    assert main(["init", f"{net}:build", "--input-shape", "2,6,8", "-o", str(recipe)]) == 0
    assert main(["show", "--check", str(recipe), "--model", f"{net}:build"]) == 0
    text = capsys.readouterr().out
    assert "Groups that lose whole blocks" in text
    assert "  embed: 3 channels of 8 columns: whole heads, split at tests/test_read_sizes.py:" in text
