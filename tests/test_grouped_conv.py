"""Grouped convolutions pruned inside their groups (pruneconf/groups/conv_groups.py): every
conv group keeps the same number of channels, ``groups`` stays, and the conv's MACs fall
with both its rows and its columns; where the conv groups cannot keep equal counts, whole
conv groups go as before. Each case is exact: masked ≡ applied and sparsity 0 ≡ original."""
from __future__ import annotations

import torch
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import trace
from pruneconf.analysis import total_macs
from pruneconf.analysis.predict import CostModel


def unit(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    """BN, ReLU, conv: DPN's pre-activation ``BnActConv2d``."""
    return nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups))


class Grouped(nn.Module):
    """A ResNeXt-style bottleneck: 1x1, a 3x3 with 4 groups of 8 channels, 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = unit(16, 32)
        self.b = unit(32, 32, 3, groups=4)
        self.c = unit(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.c(self.b(self.a(y)))
        return self.head(y.mean((2, 3)))


class DualPathBlock(nn.Module):
    """DPN's block: a residual path added to, a dense path concatenated onto, the grouped
    conv between its 1x1s (timm ``models/dpn.py`` ``DualPathBlock``)."""

    def __init__(self, c_in: int, width: int = 16, inc: int = 4, project: bool = False) -> None:
        super().__init__()
        self.width = width
        self.proj = unit(c_in, width + 2 * inc) if project else None
        self.a = unit(c_in, 32)
        self.b = unit(32, 32, 3, groups=4)
        self.c = unit(32, width + inc)

    def forward(self, x):
        if self.proj is not None:
            p = self.proj(x)
            resid, dense = p[:, :self.width], p[:, self.width:]
        else:
            resid, dense = x[:, :self.width], x[:, self.width:]
        out = self.c(self.b(self.a(x)))
        return torch.cat([resid + out[:, :self.width], dense, out[:, self.width:]], dim=1)


class DualPath(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(DualPathBlock(16, project=True), DualPathBlock(28), DualPathBlock(32))
        self.head = nn.Linear(36, 5)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Unequal(nn.Module):
    """A grouped conv reading two producers: its conv groups hold channels of two channel
    groups, which cannot promise equal counts per conv group, so whole conv groups go."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
        self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.out = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.out(torch.relu(self.g(torch.cat([self.a(x), self.b(x)], 1))))


def example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def macs(model: nn.Module, x: torch.Tensor) -> int:
    return total_macs(trace(model, x))


def test_grouped_conv_loses_channels_inside_every_group():
    torch.manual_seed(0)
    model, x = Grouped(), example()
    groups = analyse(model, x)
    group = groups["a.2"]
    assert group.channels == 32 and group.experts == 4  # a block per conv group of 8
    assert groups.grouped == {"b.2.weight": 4}
    assert assert_no_influence(model, x, groups) > 0
    before, dense_b = macs(model, x), model.b[2].weight.numel()
    pruned = prune_exactly(model, x)
    b = model.b[2]
    assert (b.groups, b.in_channels, b.out_channels, tuple(b.weight.shape[:2])) == (4, 16, 16, (16, 4))
    assert b.weight.numel() == dense_b // 4  # half the rows, half the columns
    kept = {c: len(k) for c, k in pruned.pruner.plan().kept.items()}
    after = macs(model, x)
    assert after < before and CostModel(groups).macs(kept) == after  # the prediction counts the columns


def test_each_conv_group_keeps_its_own_best_channels():
    torch.manual_seed(0)
    model, x = Grouped(), example()
    with torch.no_grad():  # conv group 0's last 4 rows of `a` the strongest: it keeps them, not others'
        model.a[2].weight[4:8] *= 100
    pruned = prune_exactly(model, x)
    kept = pruned.pruner.plan().kept["a.2"]
    assert kept.tolist()[:4] == [4, 5, 6, 7] and len(kept) == 16
    assert [int(((kept >= 8 * g) & (kept < 8 * g + 8)).sum()) for g in range(4)] == [4, 4, 4, 4]


def test_dual_path_blocks_prune_their_grouped_convs_exactly():
    torch.manual_seed(0)
    model, x = DualPath(), example()
    groups = analyse(model, x)
    assert len(groups.grouped) == 3 and assert_no_influence(model, x, groups) > 0
    before = macs(model, x)
    prune_exactly(model, x)
    assert all((blk.b[2].groups, blk.b[2].out_channels, blk.b[2].weight.shape[1]) == (4, 16, 4)
               for blk in model.blocks)
    assert macs(model, x) < 0.35 * before


def test_conv_groups_that_cannot_keep_equal_counts_go_whole():
    torch.manual_seed(0)
    model, x = Unequal(), example()
    groups = analyse(model, x)
    assert groups.grouped == {} and assert_no_influence(model, x, groups) > 0
    prune_exactly(model, x)
    assert (model.g.groups, model.g.in_channels, model.g.weight.shape[1]) == (2, 16, 8)


def test_round_to_rounds_the_total_of_a_grouped_conv():
    """``round_to: 8`` on 4 conv groups of 8: each keeps 4 (a total of 16), where rounding
    each group's count to 8 would keep everything."""
    torch.manual_seed(0)
    model, x = Grouped(), example()
    pruned = prune_exactly(model, x, {"sparsity": 0.5, "round_to": 8})
    assert len(pruned.pruner.plan().kept["a.2"]) == 16
    assert (model.b[2].groups, model.b[2].out_channels) == (4, 16)
