"""Models whose biggest group used to stay whole, now pruned exactly (masked ≡ applied).

* channels padded with ``F.pad`` (a CIFAR ResNet's option-A shortcut): the padding channels
  are constants, pinned, and the channels between them prune;
* weights standardised in ``forward()`` (timm ``StdConv2d``/``ScaledStdConv2d``, NFNet and
  BiT): rows prune as for a plain conv, columns with the standardisation taken over the kept
  columns in the masked model;
* sizes the model holds in attributes (split sizes, slice bounds, shapes for ``view``) and
  one-group GroupNorms (MixNet, DPN, ReXNet, CSPNet, PoolFormer).

Where a size stays fixed, the reason names the line of the model's code.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import trace
from pruneconf.analysis import total_macs
from pruneconf.masks.plan import group_keep
from pruneconf.trace.where import failing_line, located


class OptionA(nn.Module):
    """A CIFAR ResNet block whose shortcut pads the missing channels with zeros."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c_in, c_out, 3, 2 if c_in != c_out else 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.c2, self.b2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.pad = (c_out - c_in) // 2

    def forward(self, x):
        out = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else x
        return F.relu(out + shortcut)


def cifar_resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         OptionA(16, 16), OptionA(16, 32), OptionA(32, 32), OptionA(32, 64),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def test_padding_channels_are_pinned_and_the_rest_prunes():
    torch.manual_seed(0)
    model, x = cifar_resnet(), torch.randn(2, 3, 16, 16)
    groups = analyse(model, x)
    trunk = groups["0"]
    assert trunk.prunable and trunk.channels == 64
    # the stage-3 shortcut pads 16 on each side; inside it, stage 2's pads 8 on each side
    assert trunk.pinned.tolist() == [*range(16, 64)]
    assert group_keep(trunk, 0.5, 1) == 48 + 8
    assert assert_no_influence(model, x, groups) > 0
    before = total_macs(trace(model, x))
    pruned = prune_exactly(model, x)
    kept = pruned.pruner.plan().kept["0"]
    assert set(range(16, 64)) <= set(kept.tolist())
    assert total_macs(trace(model, x)) < 0.4 * before


def test_a_group_padded_everywhere_names_the_pad():
    model = Padded()
    groups = analyse(model, torch.randn(2, 3, 4, 4))
    assert not groups["a"].prunable
    assert "every channel is kept: constant padding channels at" in groups["a"].reasons[0]


class Padded(nn.Module):
    """``a``'s 2 channels are added to padding only: nothing of it can go."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.b(x), F.pad(x[:, :0], (0, 0, 0, 0, 0, 2)) + self.a(x)], 1))


def std_net(timm_layers) -> nn.Module:
    """Standardised convs of both kinds, grouped and not, with a residual add between."""
    std, scaled = timm_layers.StdConv2d, timm_layers.ScaledStdConv2d

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = std(3, 16, 3, padding=1)
            self.c1 = scaled(16, 16, 1)
            self.c2 = scaled(16, 16, 3, padding=1, groups=4)
            self.c3 = std(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 5)

        def forward(self, x):
            y = F.gelu(self.stem(x))
            y = y + self.c3(F.gelu(self.c2(F.gelu(self.c1(y)))))
            return self.head(y.mean((2, 3)))

    return Net()


def test_standardised_weights_prune_rows_and_columns():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model, x = std_net(timm_layers), torch.randn(2, 3, 8, 8)
    groups = analyse(model, x)
    # a timm layer is not torch.nn's own: its parameters name its groups
    assert {g.center for g in groups.prunable} == {"stem.weight", "c1.weight"}
    c1 = groups["c1.weight"]
    assert {(m.param, m.role) for m in c1.members} >= {("c1.weight", "source"), ("c1.gain", "follower"),
                                                       ("c2.weight", "follower"), ("c3.weight", "consumer")}
    assert assert_no_influence(model, x, groups) > 0
    prune_exactly(model, x)
    assert model.c1.weight.shape[:2] == (8, 8) and model.c3.weight.shape[1] == 8


def test_standardisation_over_kept_columns_is_what_makes_it_exact():
    """Without the masked standardisation the kept columns would be standardised with the
    pruned ones' zeros in the mean: the masked model would differ from the shrunk one."""
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    conv = timm_layers.StdConv2d(6, 4, 3)
    weight = conv.weight.detach().clone()
    weight[:, 3:] = 0
    whole = F.batch_norm(weight.reshape(1, 4, -1), None, None, training=True, momentum=0.0, eps=conv.eps)
    kept = F.batch_norm(weight[:, :3].reshape(1, 4, -1), None, None, training=True, momentum=0.0, eps=conv.eps)
    assert not np.allclose(whole.reshape(4, 6, 9)[:, :3].numpy(), kept.reshape(4, 3, 9).numpy(), atol=1e-3)


class HeldSizes(nn.Module):
    """Sizes held in attributes: a split by ``self.splits`` (MixNet), a partial residual at
    ``self.c`` (ReXNet, DPN), a one-group GroupNorm (PoolFormer)."""

    def __init__(self) -> None:
        super().__init__()
        self.splits, self.c = [6, 10], 8
        self.stem, self.pw = nn.Conv2d(3, 16, 1), nn.Conv2d(12, 12, 1)
        self.a, self.b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(10, 6, 5, padding=2)
        self.norm = nn.GroupNorm(1, 12)
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x):
        y = F.relu(self.stem(x))
        left, right = torch.split(y, self.splits, 1)
        y = torch.cat([self.a(left), self.b(right)], 1)
        z = self.pw(F.relu(y))
        z = torch.cat([z[:, :self.c] + y[:, :self.c], z[:, self.c:]], 1)
        return self.head(self.norm(z))


def test_sizes_held_in_attributes_follow_the_channels():
    torch.manual_seed(0)
    model, x = HeldSizes(), torch.randn(2, 3, 8, 8)
    groups = analyse(model, x)
    # a, b and pw meet in the partial residual: one group, normalised across its channels
    assert {g.center for g in groups.prunable} == {"stem", "a"}
    assert "channel_stats" in groups["a"].notes
    assert assert_no_influence(model, x, groups) > 0
    pruned = prune_exactly(model, x)
    plan = pruned.pruner.plan()
    assert model.splits == [int((plan.kept["stem"] < 6).sum()), int((plan.kept["stem"] >= 6).sum())]
    assert sum(model.splits) == 8 and model.stem.out_channels == 8
    assert model.c == int(plan.members[("pw.weight", 0)][:8].sum())
    assert model.norm.num_groups == 1 and model.norm.num_channels == model.pw.out_channels < 12


def test_a_literal_split_still_blocks():
    class Literal(HeldSizes):
        def __init__(self) -> None:
            super().__init__()
            self.splits = None  # the sizes are written in the code below

        def forward(self, x):
            left, right = torch.split(F.relu(self.stem(x)), [6, 10], 1)
            return self.head(self.norm(self.pw(torch.cat([self.a(left), self.b(right)], 1))))

    groups = analyse(Literal(), torch.randn(2, 3, 8, 8))
    assert not groups["stem"].prunable
    assert "split into constant sizes" in groups["stem"].reasons[0]


def _line_of(text: str) -> str:
    """``tests/test_weak_cuts.py:N`` of the line of this file holding ``text``."""
    lines = Path(__file__).read_text().splitlines()
    return f"tests/test_weak_cuts.py:{next(i for i, line in enumerate(lines, 1) if text in line and '_line_of' not in line)}"


def test_a_reason_names_the_line_of_model_code_that_fixes_the_size():
    class Literal(HeldSizes):
        def __init__(self) -> None:
            super().__init__()
            self.splits = None

        def forward(self, x):
            left, right = torch.split(F.relu(self.stem(x)), [6, 10], 1)  # the sizes, fixed here
            return self.head(self.norm(self.pw(torch.cat([self.a(left), self.b(right)], 1))))

    groups = analyse(Literal(), torch.randn(2, 3, 8, 8))
    reason = located(groups["stem"].reasons[0], groups.graph)
    assert reason.endswith(f"({_line_of('# the sizes, fixed here')})"), reason


def test_a_shrunk_model_that_fails_names_the_line():
    try:
        torch.zeros(4).view(3)  # fails here
    except RuntimeError as exc:
        assert failing_line(exc) == _line_of("# fails here")
