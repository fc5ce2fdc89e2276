"""Channel shuffles followed by chunk or split (ShuffleNetV2's trunk) prune exactly.

A shuffle moves channels without coupling them; each source of a trunk keeps as many
channels of each path through the shrunk model's shuffles and splits as it sends down it,
and the layers reading the trunk get their columns reordered (pruneconf/groups/routes.py).
Each model is pruned with masked ≡ applied (eval mode) and sparsity 0 ≡ original.
"""
from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from helpers import analyse, assert_no_influence, prune_exactly
from pruneconf import Pruner, load_pruned, trace
from pruneconf.analysis import total_macs
from pruneconf.recipe import write_atomic, write_recipe


def view_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, c, h, w)


def reshape_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.reshape(x.shape[0], groups, -1, *x.shape[2:]).transpose(1, 2).flatten(1, 2)


SHUFFLES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "view": view_shuffle, "reshape": reshape_shuffle, "functional": F.channel_shuffle,
    "torch": torch.channel_shuffle, "module": lambda x, g: nn.ChannelShuffle(g)(x),
}


def unit(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Block(nn.Module):
    """ShuffleNetV2's unit for ``g`` groups: ``g - 1`` pieces pass, the last is transformed."""

    def __init__(self, width: int, g: int, shuffle: Callable, split: bool) -> None:
        super().__init__()
        self.g, self.shuffle, self.split = g, shuffle, split
        self.branch = nn.Sequential(unit(width // g, width // g), nn.Conv2d(width // g, width // g, 3, padding=1),
                                    unit(width // g, width // g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = x.split(x.shape[1] // self.g, dim=1) if self.split else x.chunk(self.g, dim=1)
        return self.shuffle(torch.cat([*pieces[:-1], self.branch(pieces[-1])], 1), self.g)


class ShuffleNet(nn.Module):
    """A stage entry of ``g`` branches, shuffled; ``blocks`` blocks; a head conv reading the trunk."""

    def __init__(self, g: int, shuffle: Callable, width: int = 24, blocks: int = 3, split: bool = False) -> None:
        super().__init__()
        self.g, self.shuffle = g, shuffle
        self.entry = nn.ModuleList(unit(3, width // g) for _ in range(g))
        self.blocks = nn.Sequential(*(Block(width, g, shuffle, split) for _ in range(blocks)))
        self.head = unit(width, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(torch.cat([branch(x) for branch in self.entry], 1), self.g)
        return self.fc(self.head(self.blocks(y)).mean((2, 3)))


X = torch.randn(2, 3, 8, 8)


def trunk(groups):
    return next(g for g in groups if g.routing is not None)


@pytest.mark.parametrize("g, form, split", [(2, "view", False), (3, "view", False), (2, "functional", True),
                                             (3, "torch", False), (3, "module", True), (2, "reshape", False)])
def test_trunk_prunes_exactly(g, form, split):
    torch.manual_seed(0)
    model = ShuffleNet(g, SHUFFLES[form], split=split).eval()
    groups = analyse(model, X)
    group = trunk(groups)
    assert group.prunable and group.center == "entry.0.0" and group.experts == g + 3  # g entries, 3 blocks
    assert_no_influence(model, X, groups)
    before = total_macs(trace(model, X))
    pruned = prune_exactly(model, X)
    kept = pruned.pruner.plan().kept[group.center]
    assert 0 < len(kept) < group.channels
    assert model.head[0].in_channels < 24 and total_macs(trace(model, X)) < 0.5 * before


def test_a_dropped_piece_keeps_its_channels_apart():
    """``chunk`` after a shuffle with one piece unused: the kept channels of the used piece
    must be the used piece's in the shrunk model too, whatever the passed-on ones do."""
    torch.manual_seed(0)
    net = nn.Sequential(unit(3, 12), Lambda(lambda x: view_shuffle(x, 3).chunk(2, dim=1)[0]), unit(6, 4))
    group = trunk(analyse(net, X))
    assert group.prunable and group.channels == 12
    prune_exactly(net, X)
    assert net[0][0].out_channels < 12


def test_global_ranking_and_reload(tmp_path):
    """Global ranking keeps routable counts too, and the applied recipe rebuilds the model:
    the reordered columns are in the saved weights, the shapes follow the kept channels."""
    torch.manual_seed(0)
    model = ShuffleNet(3, view_shuffle, width=48).eval()
    fresh = copy.deepcopy(model)
    recipe, applied, weights = tmp_path / "r.yaml", tmp_path / "applied.yaml", tmp_path / "w.pt"
    groups = Pruner(model, X, {}).groups
    write_atomic(recipe, write_recipe(recipe, groups, input_shapes=[list(X.shape)],
                                      settings={"default_sparsity": 0.5, "mode": "global"}))
    pruner = Pruner(model, X, str(recipe))
    pruner.apply_masks()  # raises unless masked == applied
    assert trunk(groups).center in pruner.applied.kept
    pruner.write_applied(recipe, applied)
    torch.save(model.state_dict(), weights)
    load_pruned(fresh, applied, weights)
    assert torch.equal(fresh(X), model(X))


@pytest.mark.parametrize("form", ["view", "module"])
def test_a_shuffle_read_through_an_op_routes_cannot_follow_couples_its_groups(form):
    """A trunk read by flatten → Linear: the Linear's columns repeat each channel, an order
    the routes cannot map, so the shuffle couples channel j of its groups instead (the
    shrunk shuffle then keeps the kept channels in order), and prunes exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), Lambda(lambda x: SHUFFLES[form](x, 2)),
                        nn.Flatten(), nn.Linear(8 * 64, 4))
    groups = analyse(net, X)
    group = groups["0"]
    assert group.prunable and group.routing is None and group.channels == 4
    assert_no_influence(net, X, groups)
    prune_exactly(net, X)
    assert net[0].out_channels == 4


class Lambda(nn.Module):
    def __init__(self, fn: Callable) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_torchvision_shufflenet_trunk():
    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5()
    x = torch.randn(2, 3, 64, 64)
    before = total_macs(trace(model.eval(), x))
    pruned = prune_exactly(model, x)
    kept = pruned.pruner.plan().kept
    assert {"stage2.0.branch1.2", "stage3.0.branch1.2", "stage4.0.branch1.2"} <= set(kept)
    assert 1 - total_macs(trace(model, x)) / before >= 0.65
