"""Channel groups on small hand-built models whose groups are known in advance."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import analyse, assert_no_influence
from pruneconf.groups.context import CONSUMER, FOLLOWER, SOURCE


def member(group, layer, role):
    found = [m for m in group.members if m.layer == layer and m.role == role]
    assert found, f"{layer} is not a {role} of {group.center}: {[(m.layer, m.role) for m in group.members]}"
    return found[0]


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.conv2(F.relu(self.bn1(self.conv1(x)))))


def test_residual_add_merges_groups():
    x = torch.randn(2, 3, 6, 6)
    groups = analyse(Residual(), x)
    assert [g.center for g in groups] == ["stem", "conv1", "head"]
    g = groups["stem"]
    assert g.sources == ["stem", "conv2"] and g.channels == 8 and g.prunable
    assert {m.layer for m in g.members if m.role == CONSUMER} == {"conv1", "head"}
    inner = groups["conv1"]
    assert inner.layers == ["conv1", "bn1", "conv2"]
    assert member(inner, "bn1", FOLLOWER).size == 4
    assert not groups["head"].prunable and "model output" in groups["head"].reasons[0]
    assert_no_influence(Residual(), x, groups)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=1))


def test_cat_keeps_offsets():
    x = torch.randn(1, 3, 4, 4)
    groups = analyse(Concat(), x)
    a, b = groups["a"], groups["b"]
    assert a.channels == 4 and b.channels == 6
    np.testing.assert_array_equal(member(a, "c", CONSUMER).dense, [0, 1, 2, 3] + [-1] * 6)
    np.testing.assert_array_equal(member(b, "c", CONSUMER).dense, [-1] * 4 + list(range(6)))
    assert_no_influence(Concat(), x, groups)


class Split(nn.Module):
    def __init__(self, chunk: bool):
        super().__init__()
        self.chunk = chunk
        self.conv = nn.Conv2d(3, 8, 1)
        self.p = nn.Conv2d(4 if chunk else 3, 2, 1)
        self.q = nn.Conv2d(4 if chunk else 5, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        u, v = y.chunk(2, dim=1) if self.chunk else torch.split(y, [3, 5], dim=1)
        return self.p(u) + self.q(v)


def test_split_gives_slices():
    x = torch.randn(1, 3, 4, 4)
    groups = analyse(Split(chunk=False), x)
    g = groups["conv"]
    # the channel map follows each slice to its consumer ...
    node = next(n for n, a in groups.graph.nodes(data=True) if a["op"] == "split")
    assert groups.channel_map(node, 0)[1][1].tolist() == [0, 1, 2]
    assert groups.channel_map(node, 1)[1][1].tolist() == [3, 4, 5, 6, 7]
    np.testing.assert_array_equal(member(g, "p", CONSUMER).dense, [0, 1, 2])
    np.testing.assert_array_equal(member(g, "q", CONSUMER).dense, [3, 4, 5, 6, 7])
    # ... but split sizes are constants in forward(): pruning would cut the wrong channels
    assert not g.prunable and "constant sizes [3, 5]" in g.reasons[0]


def test_chunk_pieces_shrink_alike():
    x = torch.randn(1, 3, 4, 4)
    groups = analyse(Split(chunk=True), x)
    g = groups["conv"]
    assert g.prunable and g.channels == 4  # position j of both halves is one channel
    np.testing.assert_array_equal(member(g, "p", CONSUMER).dense, [0, 1, 2, 3])
    np.testing.assert_array_equal(member(g, "q", CONSUMER).dense, [0, 1, 2, 3])
    assert_no_influence(Split(chunk=True), x, groups)


class Depthwise(nn.Module):
    def __init__(self, multiplier: int = 1):
        super().__init__()
        self.pw = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6 * multiplier, 3, padding=1, groups=6)
        self.bn = nn.BatchNorm2d(6 * multiplier)
        self.out = nn.Conv2d(6 * multiplier, 4, 1)

    def forward(self, x):
        return self.out(self.bn(self.dw(self.pw(x))))


def test_depthwise_follows_its_producer():
    x = torch.randn(2, 3, 5, 5)
    groups = analyse(Depthwise(), x)
    assert [g.center for g in groups] == ["pw", "out"]
    g = groups["pw"]
    assert g.channels == 6 and g.sources == ["pw"]
    assert member(g, "dw", FOLLOWER).dense.tolist() == list(range(6))
    assert_no_influence(Depthwise(), x, groups)


def test_depthwise_channel_multiplier_repeats_channels():
    x = torch.randn(2, 3, 5, 5)
    groups = analyse(Depthwise(multiplier=2), x)
    g = groups["pw"]
    assert g.channels == 6
    assert member(g, "dw", FOLLOWER).dense.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert member(g, "out", CONSUMER).dense.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert_no_influence(Depthwise(multiplier=2), x, groups)


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 2 * 3, 7)
        self.out = nn.Linear(7, 2)

    def forward(self, x):
        return self.out(self.fc(torch.flatten(self.conv(x), 1)))


def test_flatten_to_linear_maps_each_channel_to_its_block():
    x = torch.randn(2, 3, 4, 5)
    groups = analyse(FlattenLinear(), x)
    consumer = member(groups["conv"], "fc", CONSUMER)
    assert consumer.dense.tolist() == np.repeat(np.arange(4), 6).tolist()
    assert groups["fc"].prunable and not groups["out"].prunable
    assert_no_influence(FlattenLinear(), x, groups)


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.out(y * s)


def test_squeeze_excite_multiply_couples():
    x = torch.randn(2, 3, 6, 6)
    groups = analyse(SqueezeExcite(), x)
    g = groups["conv"]
    assert g.sources == ["conv", "fc2"] and g.channels == 8
    assert {m.layer for m in g.members if m.role == CONSUMER} == {"fc1", "out"}
    assert groups["fc1"].channels == 2
    assert_no_influence(SqueezeExcite(), x, groups)


def test_weight_sharing_couples_every_call():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 1)
            self.shared = nn.Conv2d(4, 4, 3, padding=1)
            self.out = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.out(self.shared(F.relu(self.shared(self.stem(x)))))

    x = torch.randn(1, 3, 5, 5)
    groups = analyse(Twice(), x)
    # the shared conv reads its own output: its input and output channels are one group
    g = groups["stem"]
    assert g.sources == ["stem", "shared"] and g.channels == 4
    assert member(g, "shared", CONSUMER).size == 4 and member(g, "shared", SOURCE).size == 4
    assert_no_influence(Twice(), x, groups)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        if float(y.mean()) > -1e9:  # always true: b only joins through a branch never taken
            return self.c(y)
        return self.c(y + self.b(x))


def test_data_dependent_branch_uses_the_path_taken():
    x = torch.randn(1, 3, 4, 4)
    groups = analyse(DataDependent(), x)
    assert groups["a"].sources == ["a"] and "b" not in groups.graph
    # the reduction that fed the `if` reached no output: it does not block the group
    assert groups["a"].prunable


def test_output_layers_are_excluded_whatever_their_type():
    seg = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1),
                        nn.Upsample(scale_factor=2))
    groups = analyse(seg, torch.randn(1, 3, 4, 4))
    assert groups["0"].prunable
    assert not groups["2"].prunable and "model output" in groups["2"].reasons[0]


def test_unsupported_op_blocks_with_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.c = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.c(torch.diff(self.a(x), dim=1, append=self.b(x)[:, :1])[:, :3])

    groups = analyse(Odd(), torch.randn(1, 3, 4, 4))
    assert "unsupported op 'diff'" in groups["a"].reasons[0]
    assert not groups["b"].prunable


def test_a_failing_rule_blocks_instead_of_crashing(monkeypatch):
    from pruneconf.groups import registry

    def broken(ctx):
        raise IndexError("unexpected argument form")

    monkeypatch.setitem(registry._RULES, "relu", broken)
    groups = analyse(Residual(), torch.randn(2, 3, 6, 6))
    assert not groups["conv1"].prunable
    assert "could not follow 'relu' (IndexError: unexpected argument form)" in groups["conv1"].reasons[0]
    assert groups["stem"].prunable  # the residual stream does not pass through the relu
