"""Norm layers: per-channel statistics prune as is, statistics across channels run masked.

For every model: the expected groups, the no-influence invariant (with the norms masked),
sparsity 0 gives the original exactly, and at sparsity 0.5 the shrunk model computes what
the masked model computed (checked here and inside ``apply_masks``).
"""
from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import Pruner, trace
from pruneconf.analysis import total_macs
from pruneconf.apply import shrink
from pruneconf.groups.context import CHANNEL_STATS
from pruneconf.masks import register_masks


class ConvNeXtBlock(nn.Module):
    """Depthwise conv → channels last → LayerNorm → MLP → channels first, layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + self.gamma * y


class ConvNeXtish(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(dim) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 5)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.stem(x)).mean((2, 3))))


class PreNormBlock(nn.Module):
    def __init__(self, dim: int, norm) -> None:
        super().__init__()
        self.norm, self.fc1, self.fc2 = norm(dim), nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class MLPMixerish(nn.Module):
    """Tokens → embedding → pre-norm residual MLP blocks → final norm → head."""

    def __init__(self, dim: int = 12, depth: int = 3, norm=nn.LayerNorm) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.blocks = nn.Sequential(*(PreNormBlock(dim, norm) for _ in range(depth)))
        self.norm, self.head = norm(dim), nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))))


class TensorOpRMSNorm(nn.Module):
    """RMSNorm as Llama, Qwen and T5 write it: tensor ops in a custom module."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + 1e-6)).to(x.dtype)


class TensorOpLayerNorm(TensorOpRMSNorm):
    """LayerNorm as tensor ops (mean-subtract, then the variance), Gemma's ``1 + weight``."""

    def forward(self, x):
        centered = x - x.mean(-1, keepdim=True)
        return (1 + self.weight) * centered / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)


class InlineNormBlock(nn.Module):
    """The norm written inline in a block with children: only the block's own call is masked;
    the child ``probe`` takes a mean that looks the same (3 dims, the last of size 12) over a buffer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.probe = Probe()

    def forward(self, x):
        h = self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return x + self.fc2(F.gelu(self.fc1(h))) * self.probe()


class Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.rand(1, 3, 12) + 0.5)

    def forward(self):
        return self.table.mean(-1, keepdim=True).mean()


class OuterNorm(nn.Module):
    """A LayerNorm over two pruned dims: the outer product of two layers' outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(4, 5)
        self.norm = nn.LayerNorm((6, 5))
        self.over_b, self.over_a = nn.Linear(5, 3), nn.Linear(6, 2)

    def forward(self, x):
        z = self.norm(self.a(x)[:, :, None] * self.b(x)[:, None, :])
        return self.over_a(self.over_b(z).transpose(1, 2))


class ConvThenSeqNorm(nn.Module):
    """A LayerNorm over (channels, length) of a Conv1d output: only channels are pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.out = nn.Conv1d(3, 8, 3, padding=1), nn.LayerNorm((8, 10)), nn.Conv1d(8, 2, 1)

    def forward(self, x):
        return self.out(self.norm(self.conv(x)))


class UnmaskableNorms(nn.Module):
    """``F.layer_norm`` without a weight, and with a computed one: masking cannot find them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.fc2, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.g = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        y = F.layer_norm(self.fc(x), (8,))
        return self.out(F.layer_norm(self.fc2(y), (8,), self.g * 2))


class FixedShapeNorm(nn.Module):
    """``F.layer_norm`` with a weight but a normalised shape written in the code."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out = nn.Linear(6, 8), nn.Linear(8, 2)
        self.w = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        return self.out(F.layer_norm(self.fc(x), (8,), self.w))


def check_exact(model: nn.Module, x: torch.Tensor) -> Pruner:
    """:func:`helpers.prune_exactly` at 0.5, with no group left whole for want of a resizer."""
    pruner = prune_exactly(model, x, atol=1e-5).pruner
    assert pruner.skipped() == {}
    return pruner


def test_convnext_block_groups_and_exactness():
    model, x = ConvNeXtish(), torch.randn(2, 3, 32, 32)
    groups = analyse(model, x)
    stream = groups["stem"]
    assert stream.prunable and stream.channels == 16 and stream.notes == [CHANNEL_STATS]
    assert {"blocks.0.dw", "blocks.0.norm", "blocks.0.gamma", "blocks.1.fc2", "norm", "head"} <= set(stream.layers)
    assert len(stream.noted_at[CHANNEL_STATS]) == 3  # two block norms and the final one
    hidden = groups["blocks.0.fc1"]
    assert hidden.prunable and hidden.channels == 64 and not hidden.notes
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model.stem.out_channels == 8 and model.blocks[0].gamma.shape == (8, 1, 1)
    assert model.blocks[1].norm.normalized_shape == (8,) and model.head.in_features == 8


def test_convnext_tiny_prunes_its_residual_stream():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = torchvision.models.convnext_tiny(weights=None)
    groups = analyse(model, x)
    assert CHANNEL_STATS in groups["features.0.0"].notes
    assert assert_no_influence(model, x, groups, fraction=0.25) > 0
    before = total_macs(trace(model, x))
    # What pruneconf did before masked statistics: groups through LayerNorm left whole.
    noted = {g.center: 0.0 for g in groups.prunable if g.notes}
    old = copy.deepcopy(model)
    Pruner(old, x, {"sparsity": 0.5, "groups": noted}).apply_masks()
    check_exact(model, x)
    assert model.features[0][0].out_channels == 48 and model.features[1][0].block[2].normalized_shape == (48,)
    assert total_macs(trace(model, x)) < total_macs(trace(old, x)) < before


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm, lambda d: nn.LayerNorm(d, bias=False), TensorOpRMSNorm,
                                  TensorOpLayerNorm],
                         ids=["layer_norm", "rms_norm", "layer_norm_no_bias", "tensor_op_rms_norm", "tensor_op_layer_norm"])
def test_pre_norm_residual_blocks(norm):
    model, x = MLPMixerish(norm=norm), torch.randn(2, 7, 6)
    groups = analyse(model, x)
    stream = groups["embed"]
    assert stream.prunable and stream.channels == 12 and stream.notes == [CHANNEL_STATS]
    layers = {layer.removesuffix(".weight") for layer in stream.layers}  # a custom norm's weight is a layer
    assert {"blocks.2.norm", "blocks.2.fc2", "norm", "head"} <= layers
    assert [g.center for g in groups.prunable] == ["embed", "blocks.0.fc1", "blocks.1.fc1", "blocks.2.fc1"]
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model.embed.out_features == 6 and model.norm.weight.shape == (6,)


def test_norm_written_inline_in_a_block_with_children():
    model = nn.Sequential(nn.Linear(6, 12), InlineNormBlock(12), InlineNormBlock(12), nn.Linear(12, 3))
    x = torch.randn(2, 7, 6)
    groups = analyse(model, x)
    assert groups["0"].prunable and groups["0"].notes == [CHANNEL_STATS]
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model[0].out_features == 6 and model[1].weight.shape == (6,)


def test_norm_over_two_pruned_dims():
    model, x = OuterNorm(), torch.randn(3, 4)
    groups = analyse(model, x)
    assert groups["a"].notes == groups["b"].notes == [CHANNEL_STATS]
    assert groups["a"].channels == 6 and groups["b"].channels == 5
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model.norm.normalized_shape == (3, 3) and model.norm.weight.shape == (3, 3)


def test_norm_over_channels_and_length():
    model, x = ConvThenSeqNorm(), torch.randn(2, 3, 10)
    groups = analyse(model, x)
    assert groups["conv"].prunable and groups["conv"].notes == [CHANNEL_STATS]
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model.norm.normalized_shape == (4, 10)


def test_norms_masking_cannot_find_are_blocked():
    groups = analyse(UnmaskableNorms(), torch.randn(2, 5, 6))
    assert any("without a weight parameter" in r for r in groups["fc"].reasons), groups["fc"].reasons
    assert any("computed tensor" in r for r in groups["fc2"].reasons), groups["fc2"].reasons


def test_norm_with_a_shape_fixed_in_code_is_left_whole():
    model, x = FixedShapeNorm(), torch.randn(2, 5, 6)
    groups = analyse(model, x)
    assert groups["fc"].prunable and "w" in groups["fc"].layers
    assert assert_no_influence(model, x, groups) > 0  # masking it would be exact, shrinking not
    pruner = Pruner(model, x, {"sparsity": 0.5})
    pruner.apply_masks()
    assert "breaks the model" in pruner.dropped["fc"]
    assert model.fc.out_features == 8


def test_finetuning_with_masked_norms():
    """SGD with masks: pruned channels stay zero, gradients equal the shrunk model's, and
    masked ≡ applied still holds afterwards."""
    torch.manual_seed(0)
    model, x, target = MLPMixerish(), torch.randn(4, 7, 6), torch.randn(4, 7, 3)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    masks = pruner.register_masks()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        optimizer.zero_grad()
        F.mse_loss(model(x), target).backward()
        optimizer.step()
    for name, mask in masks.masks.items():
        assert torch.all(model.get_parameter(name)[mask == 0] == 0), name
    keep = torch.as_tensor(pruner.plan().members[("embed.weight", 0)])
    hidden = model.blocks[0].norm(model.embed(x))  # the masked norm: zero at pruned channels
    assert torch.all(hidden[..., ~keep] == 0) and torch.all(hidden[..., keep] != 0)

    masks.remove()
    shrunk = copy.deepcopy(model)
    shrink(shrunk, pruner.plan())
    pruner.masks = register_masks(model, pruner.plan())
    for net in (model, shrunk):
        net.zero_grad()
        F.mse_loss(net(x), target).backward()
    for name in ("norm.weight", "blocks.1.norm.bias", "embed.weight"):
        masked_grad, shrunk_grad = model.get_parameter(name).grad, shrunk.get_parameter(name).grad
        assert torch.allclose(masked_grad[keep], shrunk_grad, atol=1e-6), name
        assert torch.all(masked_grad[~keep] == 0), name

    with torch.no_grad():
        masked = model(x)
    pruner.apply_masks()
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5, rtol=0)


def test_masked_norm_hooks_leave_with_exceptions_and_removal():
    model, x = MLPMixerish(), torch.randn(2, 7, 6)
    pruner = Pruner(model, x, {"sparsity": 0.5})
    masks = pruner.register_masks()
    assert model.norm._forward_pre_hooks and model.norm._forward_hooks
    with pytest.raises(RuntimeError, match="normalized_shape"):
        model.norm(torch.randn(2, 7, 5))  # wrong width: torch's own error, from inside the hooks
    assert torch._C._len_torch_function_stack() == 0
    masks.remove()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


class NormZoo(nn.Module):
    """BatchNorm1d on features and on sequences, BatchNorm3d, affine InstanceNorm2d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bn_fc = nn.Linear(6, 8), nn.BatchNorm1d(8)
        self.c1, self.bn_seq = nn.Conv1d(1, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c3, self.bn3 = nn.Conv3d(1, 8, 3, padding=1), nn.BatchNorm3d(8)
        self.c2, self.inorm = nn.Conv2d(1, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        a = F.relu(self.bn_fc(self.fc(x)))
        b = F.relu(self.bn_seq(self.c1(x[:, None]))).mean(2)
        c = F.relu(self.bn3(self.c3(x[:, None, None, None].expand(-1, -1, 2, 3, -1)))).mean((2, 3, 4))
        d = F.relu(self.inorm(self.c2(x[:, None, None].expand(-1, -1, 3, -1)))).mean((2, 3))
        return self.head(torch.cat([a, b, c, d], 1))


def test_per_channel_norms_are_exact():
    model, x = NormZoo(), torch.randn(4, 6)
    groups = analyse(model, x)
    for center, norm in (("fc", "bn_fc"), ("c1", "bn_seq"), ("c3", "bn3"), ("c2", "inorm")):
        assert groups[center].prunable and norm in groups[center].layers and not groups[center].notes
    assert assert_no_influence(model, x, groups) > 0
    check_exact(model, x)
    assert model.bn3.num_features == model.inorm.num_features == 4 and model.head.in_features == 16


class _SplitQKV(nn.Module):
    def forward(self, t, b, n, c):
        return t.reshape(b, n, 3, c).unbind(2)


class WidthTiedAttention(nn.Module):
    """Attention-like code that reshapes qkv with the residual width read from a shape, but
    in another module call than the one that read it: the trace ties a size to a shape read
    only within one call (``pruneconf.trace.sizes``), so shrinking the residual stream
    breaks the shrunk model, and only the dry run can tell."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed, self.norm, self.qkv = nn.Linear(6, dim), nn.LayerNorm(dim), nn.Linear(dim, 3 * dim)
        self.split, self.proj, self.head = _SplitQKV(), nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x):
        y = self.embed(x)
        b, n, c = y.shape
        q, k, v = self.split(self.qkv(self.norm(y)), b, n, c)
        return self.head(y + self.proj(q * k + v))


def test_group_whose_shrinking_breaks_the_code_is_left_whole():
    model, x = WidthTiedAttention(), torch.randn(2, 5, 6)
    pruner = Pruner(model, x, {"sparsity": 0.5, "groups": {"qkv": 0.0}})  # qkv's own reshape is fixed too
    pruner.apply_masks()
    assert "fails to run" in pruner.dropped["embed"]
    assert model.embed.out_features == 8


@pytest.mark.parametrize("name, kwargs", [("convnext_atto", {}), ("vit_tiny_patch16_224", {"img_size": 32})])
def test_timm_residual_streams_prune(name, kwargs):
    torch.manual_seed(0)
    model, x = timm.create_model(name, pretrained=False, **kwargs), torch.randn(2, 3, 32, 32)
    groups = analyse(model, x)
    stream = [g for g in groups.prunable if g.notes]
    assert stream
    assert assert_no_influence(model, x, groups, fraction=0.25) > 0
    pruner = check_exact(model, x)
    assert all(g.center in pruner.plan().kept for g in stream)
