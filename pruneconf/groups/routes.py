"""Channels routed through a channel shuffle: which to keep, and in which order layers see them.

A channel shuffle is a fixed permutation of channels, but not one that survives pruning as
it is: the shrunk model shuffles its shrunk tensor with its own, smaller ``g × c/g`` view.
Coupling channel ``j`` of every shuffle group keeps the kept channels in order, but in
ShuffleNetV2 the next block's ``chunk`` then couples channel ``j`` of the two halves, block
after block, and a stage's trunk collapses to one channel.

So the channels a shuffle moves are not coupled at all; each source keeps its own. What the
shrunk model must still do is send every kept channel to the same layers: each piece of a
``chunk`` (or equal ``split``) that a layer reads must hold exactly the kept channels of the
original piece; a piece that only passes on to the next shuffle may hold others. Where a
channel goes in the shrunk model depends only on its rank among its source's kept rows, so
replaying the trunk's shuffles and splits on the ranks (the *route* of each rank: the
pieces layers read that it lands in) says how many channels of each route
every source keeps; each source then keeps its best channels of each route, and rank ``i``
gets a kept channel whose route is rank ``i``'s. Replaying once more on the kept channels
gives the order in which every layer reading or writing the trunk sees them: its rows or
columns are reordered to match (the masked model needs no reordering: it keeps every
channel where it was).

Every source of one trunk keeps the same number of channels (the model's ``cat`` and
shuffle views need equal parts), so the trunk is one group whose blocks are its sources.
A layer that reads the trunk through anything but shuffles, equal splits and
concatenations leaves the trunk whole, with the layer and the shuffle named.
"""
from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from typing import Callable, Sequence

import numpy as np

SHUFFLE, SPLIT = "shuffle", "split"


@dataclasses.dataclass(frozen=True)
class Step:
    """One op of a routed trunk: a shuffle into ``groups`` groups, or a split into
    ``groups`` equal pieces; arrays hold labels while rules run, channels afterwards."""

    kind: str
    source: np.ndarray
    outputs: tuple[np.ndarray, ...]
    groups: int
    node: str

    def relabel(self, fn: Callable[[np.ndarray], np.ndarray]) -> "Step":
        return Step(self.kind, fn(self.source), tuple(fn(o) for o in self.outputs), self.groups, self.node)


def key(labels: np.ndarray) -> bytes:
    return np.ascontiguousarray(labels, dtype=np.int64).tobytes()


Known = dict  # key of an original array -> (original array, its channels in the shrunk model)


def parts(channels: np.ndarray, known: Known) -> list[bytes] | None:
    """The known arrays a tensor whose channels are ``channels`` is made of: one, or a
    concatenation of several (the longest first); None when it is neither."""
    if key(channels) in known:
        return [key(channels)]
    starts: dict[int, list[np.ndarray]] = defaultdict(list)
    for orig, _ in known.values():
        if len(orig):
            starts[int(orig[0])].append(orig)
    out, i = [], 0
    while i < len(channels):
        fits = [o for o in starts.get(int(channels[i]), [])
                if len(o) <= len(channels) - i and np.array_equal(channels[i:i + len(o)], o)]
        if not fits:
            return None
        orig = max(fits, key=len)
        out.append(key(orig))
        i += len(orig)
    return out


def layout(channels: np.ndarray, known: Known) -> np.ndarray | None:
    """The shrunk model's order of a tensor whose channels are ``channels``, or None."""
    found = parts(channels, known)
    if found is None:
        return None
    return np.concatenate([known[k][1] for k in found]) if found else np.empty(0, np.int64)


class Routing:
    """The trunk of one group: its sources (blocks), its steps, and the channel sequence of
    every member (in the order of its parameter's dimension)."""

    def __init__(self, blocks: Sequence[np.ndarray], steps: Sequence[Step]) -> None:
        self.blocks = list(blocks)
        self.steps = list(steps)
        self.members: dict[int, np.ndarray] = {}  # set by ``read_by``
        replayed = self.replay(self.blocks)
        if replayed is None:
            raise ValueError("the trunk does not replay on its own channels")
        self.known, self.routes = replayed
        self.read: set[tuple[int, int]] = set()  # the split pieces layers read (see ``read_by``)

    def read_by(self, members: dict[int, np.ndarray]) -> None:
        """Record the members and the split pieces that must hold the same channels in the
        shrunk model: those a layer reads, and those nothing reads (dropped). A piece that
        only passes on to the next shuffle may hold others, as long as every channel
        reaches the same layers."""
        self.members = members
        used = {k for channels in members.values() for k in parts(channels, self.known) or ()}
        onward = {k for step in self.steps for k in parts(step.source, self.known) or ()}
        self.read = {(i, p) for i, step in enumerate(self.steps) if step.kind == SPLIT
                     for p, piece in enumerate(step.outputs) if key(piece) in used or key(piece) not in onward}

    def _route(self, routes: dict[int, tuple], channel: int) -> tuple:
        return tuple(r for r in routes.get(channel, ()) if r in self.read)

    def replay(self, sources: Sequence[np.ndarray]) -> tuple[Known, dict[int, tuple]] | None:
        """Run the steps on the shrunk sources' channels (``sources[b]`` for block ``b``):
        the shrunk order of every trunk tensor and the route of every channel; None when a
        step cannot run (a size the shuffle or split does not divide, an unknown input)."""
        known: Known = {key(b): (b, s) for b, s in zip(self.blocks, sources)}
        routes: dict[int, list] = defaultdict(list)
        for i, step in enumerate(self.steps):
            x = layout(step.source, known)
            if x is None or len(x) % step.groups:
                return None
            grid = x.reshape(step.groups, -1)
            outs = [grid.T.ravel()] if step.kind == SHUFFLE else list(grid)
            if step.kind == SPLIT:
                for piece, channels in enumerate(outs):
                    for c in channels.tolist():
                        routes[c].append((i, piece))
            for orig, shrunk in zip(step.outputs, outs):
                known[key(orig)] = (orig, shrunk)
        return known, {c: tuple(r) for c, r in routes.items()}

    def _ranked(self, per: int, pick: Callable[[np.ndarray, int], np.ndarray]) -> list[np.ndarray] | None:
        """Each source's kept channels in rank order, ``per`` of them: as many of each route
        as the shrunk model sends down it, chosen by ``pick(candidates, n)``."""
        replayed = self.replay([b[:per] for b in self.blocks])  # ranks stand for channels
        if replayed is None:
            return None
        shrunk_routes = replayed[1]
        out = []
        for block in self.blocks:
            wanted = [self._route(shrunk_routes, int(c)) for c in block[:per]]
            chosen = {}
            for route, n in Counter(wanted).items():
                candidates = np.asarray([c for c in block.tolist() if self._route(self.routes, c) == route],
                                        dtype=np.int64)
                picked = np.sort(pick(candidates, n)) if len(candidates) >= n else np.empty(0, np.int64)
                if len(picked) != n:
                    return None
                chosen[route] = iter(picked.tolist())
            out.append(np.asarray([next(chosen[r]) for r in wanted], dtype=np.int64))
        return out

    def choose(self, importance: np.ndarray, keep: int) -> np.ndarray:
        """The most important channels, about ``keep`` in all, sorted: the routes admit
        only some counts per source (a shrunk stage may send more channels down a path
        than the original has), so the nearest count that routes, the larger on a tie;
        every channel when none does."""
        def best(candidates: np.ndarray, n: int) -> np.ndarray:
            return candidates[np.argsort(-importance[candidates], kind="stable")[:n]]
        width, per = len(self.blocks[0]), keep // len(self.blocks)
        for count in sorted(range(1, width), key=lambda n: (abs(n - per), -n)):
            ranked = self._ranked(count, best)
            if ranked is not None:
                return np.sort(np.concatenate(ranked))
        return np.arange(width * len(self.blocks))

    def orders(self, kept: np.ndarray) -> dict[int, np.ndarray]:
        """For each member whose kept channels the shrunk model sees in another order than
        their own: that order, as positions among its kept indices (ascending)."""
        kept_set = set(np.asarray(kept).tolist())
        ranked = self._ranked(len(kept) // len(self.blocks),
                              lambda candidates, n: candidates[[c in kept_set for c in candidates.tolist()]])
        replayed = None if ranked is None else self.replay(ranked)
        if replayed is None:
            raise ValueError("the kept channels do not fit the routes of the channel shuffle")
        out = {}
        for index, channels in self.members.items():
            ours = [c for c in channels.tolist() if c in kept_set]
            shrunk = layout(channels, replayed[0])
            position = {c: i for i, c in enumerate(ours)}
            order = np.asarray([position[c] for c in shrunk.tolist()], dtype=np.int64)
            if len(order) != len(ours):
                raise ValueError("a layer reading a shuffled trunk would see other channels than it keeps")
            if not np.array_equal(order, np.arange(len(order))):
                out[index] = order
        return out


def build_routing(members: Sequence, steps: Sequence[Step], channels: int) -> tuple[Routing | None, str | None]:
    """The routing of a group from its members and the steps its channels went through, or
    why its channels cannot be routed (the group is then left whole)."""
    where = steps[0].node
    blocks: dict[bytes, np.ndarray] = {}
    for m in members:
        if m.role == "source":
            if m.size != m.length:
                return None, f"'{m.layer}' writes only part of the channels shuffled at '{where}'"
            blocks.setdefault(key(m.channels), m.channels)
    sources = list(blocks.values())
    covered = np.concatenate(sources) if sources else np.empty(0, np.int64)
    if len(covered) != channels or len(np.unique(covered)) != channels:
        return None, f"the channels shuffled at '{where}' are merged with each other or with other channels"
    if len({len(b) for b in sources}) != 1:
        return None, f"the layers whose channels are shuffled at '{where}' have different widths"
    try:
        routing = Routing(sources, steps)
    except ValueError:
        return None, f"the channels shuffled at '{where}' do not split evenly"
    for m in members:
        if m.size != m.length or layout(m.channels, routing.known) is None:
            return None, f"'{m.layer}' reads the channels shuffled at '{where}' through an op pruneconf cannot follow"
    routing.read_by({i: m.channels for i, m in enumerate(members)})
    return routing, None


__all__ = ["Routing", "SHUFFLE", "SPLIT", "Step", "build_routing", "key", "layout"]
