"""The vectorised union solver agrees with networkx, and op names normalise."""
import networkx as nx
import numpy as np
import pytest
import torch

from pruneconf.groups.labels import LabelSpace, connected_roots
from pruneconf.trace.opnames import canonical_name


@pytest.mark.parametrize("seed", range(5))
def test_connected_roots_matches_networkx(seed):
    rng = np.random.default_rng(seed)
    n = 500
    left, right = rng.integers(0, n, 300), rng.integers(0, n, 300)
    roots = connected_roots(n, left, right)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(left.tolist(), right.tolist()))
    for component in nx.connected_components(graph):
        assert {int(roots[i]) for i in component} == {min(component)}


def test_long_chain_converges():
    n = 10_000
    roots = connected_roots(n, np.arange(1, n), np.arange(0, n - 1))
    assert (roots == 0).all()


def test_label_space_union_and_block():
    space = LabelSpace()
    a, b = space.new(3), space.new(3)
    space.union(a, b[::-1])
    space.block(a[:1], "why")
    roots = space.solve()
    assert roots[a[0]] == roots[b[2]] and roots[a[1]] == roots[b[1]]
    assert space.blocks[0][1] == "why"


@pytest.mark.parametrize("func, op, inplace, reflected", [
    (torch.add, "add", False, False), (torch.Tensor.add_, "add", True, False),
    (torch.Tensor.__iadd__, "add", True, False), (torch.Tensor.__radd__, "add", False, True),
    (torch.Tensor.__truediv__, "div", False, False), (torch.Tensor.__setitem__, "setitem", True, False),
    (torch.cat, "cat", False, False), (torch.concat, "cat", False, False),
    (torch.Tensor.T.__get__, "T", False, False), (torch.nn.functional.relu, "relu", False, False),
])
def test_canonical_names(func, op, inplace, reflected):
    assert tuple(canonical_name(func)) == (op, inplace, reflected)
