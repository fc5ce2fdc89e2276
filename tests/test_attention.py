"""Attention: ``nn.MultiheadAttention`` (consistent head dims) and hand-written attention
(whole heads), each pruned with masked ≡ applied, sparsity 0 ≡ original, MACs reduced."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F
import transformers
from torch import nn

from helpers import analyse, prune_exactly
from pruneconf import Pruner, trace
from pruneconf.analysis import total_macs


def outputs(model, *x):
    with torch.no_grad():
        out = model.eval()(*x)
    return out if isinstance(out, tuple) else (out,)


def prune_checked(model, x, sparsity=0.5, groups=None):
    """:func:`helpers.prune_exactly`; return (pruner, MACs before, MACs after)."""
    example = x[0] if isinstance(x, tuple) and len(x) == 1 else x
    before = total_macs(trace(model, example))
    pruner = prune_exactly(model, example, {"sparsity": sparsity, "groups": groups or {}}).pruner
    return pruner, before, total_macs(trace(model, example))


class SelfAttentionBlock(nn.Module):
    """Pre-projection, ``nn.MultiheadAttention`` with a residual, an MLP, a head."""

    def __init__(self, embed=32, heads=4, batch_first=True, **kw):
        super().__init__()
        self.inp = nn.Linear(12, embed)
        self.attn = nn.MultiheadAttention(embed, heads, batch_first=batch_first, **kw)
        self.mlp = nn.Sequential(nn.Linear(embed, 48), nn.GELU(), nn.Linear(48, embed))
        self.head = nn.Linear(embed, 3)
        self.batch_first = batch_first

    def forward(self, x):
        x = self.inp(x)
        if not self.batch_first:
            x = x.transpose(0, 1)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        x = x + self.mlp(x)
        return self.head(x.mean(1 if self.batch_first else 0))


def test_multihead_attention_couples_dim_j_of_every_head_with_the_embedding():
    model, x = SelfAttentionBlock(), torch.randn(2, 7, 12)
    group = analyse(model, x)["inp"]
    assert group.prunable and group.channels == 32 // 4  # one channel = dim j of all 4 heads
    rows = [m for m in group.members if m.param == "attn.in_proj_weight" and m.dim == 0]
    assert rows and rows[0].size == 3 * 32  # q, k and v rows of every head
    assert {"attn.out_proj.weight", "attn.in_proj_bias", "mlp.2.weight"} <= {m.param for m in group.members}


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"add_bias_kv": True}, {"batch_first": False},
                                {"add_zero_attn": True}])
def test_multihead_attention_prunes_exactly(kw):
    torch.manual_seed(0)
    model, x = SelfAttentionBlock(**kw), torch.randn(2, 7, 12)
    _, before, after = prune_checked(model, x)
    attn = model.attn
    assert (attn.embed_dim, attn.head_dim, attn.num_heads) == (16, 4, 4)
    assert attn.in_proj_weight.shape == (48, 16) and attn.out_proj.weight.shape == (16, 16)
    assert after < before
    fresh = nn.MultiheadAttention(16, 4, batch_first=attn.batch_first, bias=attn.in_proj_bias is not None,
                                  add_bias_kv=attn.bias_k is not None, add_zero_attn=attn.add_zero_attn)
    fresh.load_state_dict(attn.state_dict())  # the pruned layer is an ordinary, smaller layer
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)


def test_multihead_attention_trains_with_masks_after_pruning():
    model, x = SelfAttentionBlock(), torch.randn(2, 7, 12)
    prune_checked(model, x)
    model.train()
    model(x).sum().backward()
    assert model.attn.in_proj_weight.grad.shape == (48, 16)


class CrossAttention(nn.Module):
    """Keys and values of other sizes (``kdim``/``vdim``), weights returned too."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(12, 32), nn.Linear(10, 20), nn.Linear(10, 24)
        self.attn = nn.MultiheadAttention(32, 4, kdim=20, vdim=24, batch_first=True)
        self.head = nn.Linear(32, 3)

    def forward(self, x, y):
        out, weights = self.attn(self.q(x), self.k(y), self.v(y))
        return self.head(torch.relu(out)).mean(1), weights


def test_cross_attention_with_kdim_and_vdim_prunes_exactly():
    torch.manual_seed(0)
    model, x = CrossAttention(), (torch.randn(2, 7, 12), torch.randn(2, 5, 10))
    groups = analyse(model, *x)
    assert groups["k"].channels == 20 and groups["v"].channels == 24  # key/value inputs: own groups
    _, before, after = prune_checked(model, x)
    assert (model.attn.embed_dim, model.attn.kdim, model.attn.vdim) == (16, 10, 12)
    assert after < before


def test_sparsity_zero_leaves_attention_untouched():
    torch.manual_seed(0)
    model, x = SelfAttentionBlock(), torch.randn(2, 7, 12)
    reference = outputs(model, x)
    Pruner(model, x, {"sparsity": 0.0}).apply_masks()
    assert torch.equal(outputs(model, x)[0], reference[0]) and model.attn.embed_dim == 32


class HandWrittenAttention(nn.Module):
    """The timm/Hugging Face pattern: one qkv projection split into heads, sizes kept as
    attributes, fused or explicit attention, heads merged before the projection."""

    def __init__(self, dim=24, heads=4, head_dim=8, fused=True, dynamic=False):
        super().__init__()
        self.num_heads, self.head_dim, self.attn_dim = heads, head_dim, heads * head_dim
        self.scale = head_dim ** -0.5
        self.fused, self.dynamic = fused, dynamic
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        head_dim = C // self.num_heads if self.dynamic else self.head_dim
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.fused:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            x = (q * self.scale @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


class Transformer(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.embed = nn.Linear(10, 24)
        self.attn = HandWrittenAttention(**kw)
        self.fc1, self.fc2 = nn.Linear(24, 40), nn.Linear(40, 24)
        self.head = nn.Linear(24, 2)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


@pytest.mark.parametrize("fused", [True, False])
def test_hand_written_attention_prunes_whole_heads_and_updates_the_head_count(fused):
    torch.manual_seed(0)
    model, x = Transformer(fused=fused), torch.randn(2, 6, 10)
    group = analyse(model, x)["attn.qkv"]
    assert group.prunable and group.channels == 4  # one channel per head (its q, k, v and outputs)
    pruner, before, after = prune_checked(model, x)
    assert not pruner.dropped
    assert (model.attn.num_heads, model.attn.head_dim, model.attn.attn_dim) == (2, 8, 16)
    assert model.attn.qkv.out_features == 48 and model.attn.proj.in_features == 16
    assert after < before


def test_hand_written_attention_that_derives_sizes_from_the_input_is_left_whole():
    """``C // num_heads`` ties the head dim to the embedding: pruning heads while the
    embedding stays breaks the model, which the dry run finds before any mask is set; the
    rest still prunes."""
    torch.manual_seed(0)
    model, x = Transformer(head_dim=6, dynamic=True), torch.randn(2, 6, 10)
    pruner, before, after = prune_checked(model, x, groups={"embed": 0.0})
    assert "attn.qkv" in pruner.dropped and "breaks the model" in pruner.dropped["attn.qkv"]
    assert model.attn.num_heads == 4 and model.attn.qkv.out_features == 72
    assert model.fc1.out_features == 20 and after < before


class BeitBias(HandWrittenAttention):
    """BEiT/EVA's qkv bias, built in ``forward`` from two parameters and a zero buffer."""

    def __init__(self):
        super().__init__(fused=False)
        self.qkv.bias = None
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(self.attn_dim)), nn.Parameter(torch.randn(self.attn_dim))
        self.register_buffer("k_bias", torch.zeros(self.attn_dim), persistent=False)

    def forward(self, x):
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        B, N, _ = x.shape
        qkv = F.linear(x, self.qkv.weight, bias).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        x = (q * self.scale @ k.transpose(-2, -1)).softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, self.attn_dim))


def test_a_bias_computed_in_forward_follows_the_heads():
    torch.manual_seed(0)
    model, x = Transformer(), torch.randn(2, 6, 10)
    model.attn = BeitBias()
    group = analyse(model, x)["attn.qkv"]
    assert {"attn.q_bias", "attn.v_bias", "attn.k_bias"} <= {m.param for m in group.members}
    pruner, before, after = prune_checked(model, x)
    assert not pruner.dropped and model.attn.q_bias.shape == model.attn.k_bias.shape == (16,)


class Conv1D(nn.Module):
    """Hugging Face's GPT-2 linear layer: weight stored transposed, run by ``addmm``, output
    size kept in ``self.nf``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


class GPT2Block(nn.Module):
    """GPT-2's attention as Hugging Face writes it: ``split(self.split_size)`` into q, k, v,
    heads as ``view(..., -1, self.head_dim)``, eager softmax attention, ``Conv1D`` layers."""

    def __init__(self, dim=24, heads=4):
        super().__init__()
        self.embed = nn.Linear(10, dim)
        self.split_size, self.head_dim = dim, dim // heads
        self.c_attn, self.c_proj = Conv1D(3 * dim, dim), Conv1D(dim, dim)
        self.c_fc, self.c_out = Conv1D(4 * dim, dim), Conv1D(dim, 4 * dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x):
        x = self.embed(x)
        q, k, v = self.c_attn(x).split(self.split_size, dim=2)
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        weights = (q @ k.transpose(-1, -2) / v.size(-1) ** 0.5).softmax(-1)
        x = x + self.c_proj((weights @ v).transpose(1, 2).reshape(*x.shape[:-1], -1))
        x = x + self.c_out(F.gelu(self.c_fc(x)))
        return self.head(x[:, 0])


def test_gpt2_style_attention_prunes_whole_heads_and_updates_split_and_layer_sizes():
    torch.manual_seed(0)
    model, x = GPT2Block(), torch.randn(2, 6, 10)
    groups = analyse(model, x)
    assert groups["c_attn.weight"].prunable and groups["c_attn.weight"].channels == 4  # one channel per head
    assert groups["embed"].prunable and groups["c_fc.weight"].prunable
    pruner, before, after = prune_checked(model, x)
    assert not pruner.dropped and after < before
    assert (model.split_size, model.head_dim, model.c_attn.nf, model.c_fc.nf) == (12, 6, 36, 48)
    assert model.c_attn.weight.shape == (12, 36) and model.c_proj.weight.shape == (12, 12)


@pytest.mark.parametrize("make, embedding, left_whole", [
    (lambda: Transformer(fused=False), "embed", set()),
    (lambda: Transformer(head_dim=6, dynamic=True), "embed", {"attn.qkv"}),  # C // heads: the dry run leaves it whole
    (SelfAttentionBlock, "inp", set()),
    (GPT2Block, "embed", {"c_attn.weight"}),  # its reshape to (B, N, C) fixes the width too
])
def test_pruned_attention_rebuilds_from_its_recipe(tmp_path, make, embedding, left_whole):
    """``load_pruned`` redoes head counts, folded scales and left-whole groups from the recipe:
    the embedding is kept whole by editing the recipe, so heads prune without it, and where the
    model's code ties the head dim to the embedding the dry run leaves the heads whole too."""
    from pruneconf import load_pruned
    from pruneconf.recipe import load_document, write_atomic, write_recipe
    from pruneconf.recipe.yamlio import dump_document

    torch.manual_seed(0)
    model = make()
    x = torch.randn(2, 6, 12 if isinstance(model, SelfAttentionBlock) else 10)
    fresh = copy.deepcopy(model)
    recipe, applied, weights = tmp_path / "r.yaml", tmp_path / "applied.yaml", tmp_path / "w.pt"
    groups = Pruner(model, x, {}).groups
    write_atomic(recipe, write_recipe(recipe, groups, input_shapes=[list(x.shape)],
                                      settings={"default_sparsity": 0.5}))
    before = recipe.read_text()
    doc = load_document(recipe)
    doc["groups"][embedding]["sparsity"] = 0.0
    write_atomic(recipe, dump_document(doc))
    assert recipe.read_text() != before
    pruner = Pruner(model, x, str(recipe))
    pruner.apply_masks()
    assert pruner.recipe.sparsity[embedding] == 0.0 and set(pruner.dropped) == left_whole
    assert embedding not in pruner.applied.kept and not left_whole & set(pruner.applied.kept)
    pruner.write_applied(recipe, applied)
    torch.save(model.state_dict(), weights)
    load_pruned(fresh, applied, weights)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert torch.equal(outputs(fresh, x)[0], outputs(model, x)[0])


@pytest.mark.parametrize("arch", ["bert", "gpt2", "vit"])
def test_hugging_face_models_prune_exactly(arch):
    """Small random models from configs, nothing downloaded."""
    torch.manual_seed(0)
    small = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    if arch == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(hidden_size=64, vocab_size=100, **small))
        x = {"input_ids": torch.randint(0, 100, (2, 12))}
    elif arch == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=100,
                                                                     n_positions=32, bos_token_id=0, eos_token_id=0))
        x = {"input_ids": torch.randint(0, 100, (2, 12))}
    else:
        model = transformers.ViTForImageClassification(transformers.ViTConfig(hidden_size=64, image_size=32,
                                                                              patch_size=8, **small))
        x = torch.randn(2, 3, 32, 32)
    model.eval()
    before = total_macs(trace(model, x))
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()  # raises unless the shrunk model reproduces the masked one
    assert not pruner.dropped and total_macs(trace(model, x)) < 0.35 * before
