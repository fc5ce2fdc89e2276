"""What a channel rule sees: one op node, its inputs' channel labels, and the label space.

A tensor's channel labels are a ``{dim: labels}`` dict: ``labels[i]`` is the label of
index ``i`` along ``dim``. Dimensions without an entry carry no channel identity (spatial
positions of a conv output, attention scores). Parameters and buffers get labels on every
dimension, allocated on first use, so a parameter used by several ops (weight sharing)
couples all of its uses. Model inputs and tensors from outside the model are labelled but
blocked: whatever they touch cannot change size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import networkx as nx
import numpy as np

from ..trace.refs import Ref, iter_refs
from .labels import LabelSpace

TensorLabels = dict  # dict[int, np.ndarray]: dim -> labels along that dim

# Roles a parameter dimension plays in a group.
SOURCE = "source"      # output channels of a weight layer: the group prunes them (conv, linear)
CONSUMER = "consumer"  # input channels of a weight layer: pruned columns (conv, linear)
FOLLOWER = "follower"  # per-channel parameters that follow a channel (norms, biases, depthwise)

# Note kinds.
CHANNEL_STATS = "channel_stats"  # normalised by statistics across channels (LayerNorm/RMSNorm)
WHOLE_HEADS = "whole_heads"  # each channel is a whole head a split reshape cut (q·k contracts it)
SIZE_READ = "size_read"  # a width the model's code read from this tensor's shape and reshaped to


@dataclasses.dataclass(frozen=True)
class Role:
    param: str
    dim: int
    role: str
    node: str


@dataclasses.dataclass
class Note:
    """A property of some channels that later phases must honour (e.g. channel statistics)."""

    labels: np.ndarray
    kind: str
    node: str


class RuleContext:
    """Shared state of one analysis; ``node`` is the op the current rule is looking at."""

    def __init__(self, graph: nx.DiGraph, whole_blocks: frozenset[str] = frozenset(),
                 outer_splits: frozenset[str] = frozenset(),
                 coupled: frozenset[str] = frozenset()) -> None:
        self.graph = graph
        self.nodes = dict(graph.nodes(data=True))  # node -> attrs: rules look nodes up thousands of times
        self.whole_blocks = whole_blocks  # split reshapes that keep blocks (heads) whole
        self.coupled = coupled  # channel shuffles whose channels could not be routed: they couple them;
        #                        grouped convs whose groups cannot keep equal counts: whole groups go
        # first carrier label of a split reshape -> its nodes (several when pieces of one
        # projection, coupled by ``chunk``, are each reshaped into heads: MaxViT's q, k, v)
        self.splits: dict[int, list[str]] = {}
        self.contracted_splits: set[str] = set()
        # split reshapes whose outermost dim carries the channels (a conv's weight update
        # ``(O, I * taps)`` viewed as ``(O, I, kh, kw)``), and those a rule asked for
        self.outer_splits = outer_splits
        self.wanted_outer_splits: set[str] = set()
        self.space = LabelSpace()
        self.tensors: dict[tuple[str, int], TensorLabels] = {}
        self.params: dict[tuple[str, int], np.ndarray] = {}
        self.first_use: dict[tuple[str, int], str] = {}  # (param, dim) -> op node that first used it
        self.roles: dict[tuple[str, int, str], Role] = {}
        self.notes: list[Note] = []
        self.pins: list[tuple[np.ndarray, str]] = []  # channels that must be kept, with why
        self.shares: list[list[np.ndarray]] = []  # pieces that each keep their own share (``share``)
        self.slices: dict[str, tuple[str, int]] = {}  # ``name[e]`` -> (stacked parameter, e)
        # grouped convs pruned inside each conv group: node -> (weight, conv groups, channel labels)
        self.grouped: dict[str, tuple[str, int, np.ndarray]] = {}
        # Checks that need the solved unions, run once by ``find_groups``: each gets the roots.
        self.deferred: list[Callable[[np.ndarray], None]] = []
        self.steps: list = []  # shuffles and splits of shuffled channels (``routes.Step``), in order
        self.routed: set[bytes] = set()  # keys of the labels a shuffle output (see ``routes``)
        self.fixed: dict[str, TensorLabels] = {}  # outputs a rule decided for later ops of its pattern
        self.node = ""
        self.attrs: dict[str, Any] = {}

    # -- the current op -------------------------------------------------------------
    def at(self, node: str) -> "RuleContext":
        self.node = node
        self.attrs = self.nodes[node]
        return self

    @property
    def op(self) -> str:
        return self.attrs["op"]

    @property
    def args(self) -> tuple:
        return self.attrs["args"]

    @property
    def out_shapes(self) -> list[tuple[int, ...]]:
        return self.attrs["out_shapes"]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        """The argument at ``index`` or keyword ``name``, as recorded."""
        args, kwargs = self.attrs["args"], self.attrs["kwargs"]
        if len(args) > index:
            return args[index]
        return kwargs.get(name, default)

    def size_attribute(self, value: Any) -> str | None:
        """The attribute of the current op's module that holds ``value`` (an int or a list
        of them), which apply can update when the size shrinks; None when there is none,
        as for a literal in the model's code."""
        sizes = self.graph.graph.get("sizes", {}).get(self.attrs.get("module"), {})
        want = list(value) if isinstance(value, (list, tuple)) else value
        return next((name for name, held in sizes.items()
                     if (list(held) if isinstance(held, (list, tuple)) else held) == want), None)

    def tensor_args(self) -> list[Ref]:
        return list(iter_refs((self.attrs["args"], self.attrs["kwargs"])))

    # -- tensors ----------------------------------------------------------------------
    def shape(self, ref: Ref) -> tuple[int, ...]:
        return tuple(self.nodes[ref.node]["out_shapes"][ref.index])

    def is_param(self, ref: Any) -> bool:
        return isinstance(ref, Ref) and self.nodes[ref.node]["kind"] in ("param", "buffer")

    def param_name(self, ref: Ref) -> str:
        """The parameter's name; ``name[e]`` for slice ``e`` of a stacked parameter, whose
        dims are labelled apart from the other slices' (each expert has its own channels)."""
        attrs = self.nodes[ref.node]
        if attrs.get("slice") is None:
            return attrs["target"]
        name = f"{attrs['target']}[{attrs['slice']}]"
        self.slices[name] = (attrs["target"], attrs["slice"])
        return name

    def labels(self, ref: Ref) -> TensorLabels:
        """Channel labels of the tensor ``ref`` points at."""
        key = (ref.node, ref.index)
        found = self.tensors.get(key)
        if found is not None:
            return found
        attrs = self.nodes[ref.node]
        shape = self.shape(ref)
        if attrs["kind"] in ("param", "buffer"):
            found = {d: self.param_dim(ref, d) for d, n in enumerate(shape) if n > 1}
        else:
            reason = {"input": "fed by a model input",
                      "constant": "combined with a tensor that is not a parameter or buffer of the model",
                      }.get(attrs["kind"], f"produced by '{ref.node}' ({attrs['op']}) without channel labels")
            found = self.blocked_labels(shape, f"{reason} at '{self.node}'")  # where it meets the model
        self.tensors[key] = found
        return found

    def param_dim(self, ref: Ref, dim: int) -> np.ndarray:
        """Labels of dimension ``dim`` of the parameter or buffer ``ref``."""
        key = (self.param_name(ref), dim)
        labels = self.params.get(key)
        if labels is None:
            labels = self.params[key] = self.space.new(self.shape(ref)[dim])
            self.first_use[key] = self.node
        return labels

    def all_roles(self) -> list[Role]:
        """Declared roles, plus a follower role for every parameter dimension no rule gave
        one: its channels still flow somewhere (a layer scale reshaped before it multiplies),
        so if they join a group the dimension must be sliced with it."""
        declared = {(r.param, r.dim) for r in self.roles.values()}
        implicit = [Role(name, dim, FOLLOWER, self.first_use[(name, dim)])
                    for name, dim in self.params if (name, dim) not in declared]
        return [*self.roles.values(), *implicit]

    def blocked_labels(self, shape: Iterable[int], reason: str) -> TensorLabels:
        """Fresh labels on every dimension of ``shape``, all blocked with ``reason``."""
        out = {}
        for d, n in enumerate(shape):
            out[d] = self.space.new(n)
            self.space.block(out[d], reason)
        return out

    def set_out(self, labels: TensorLabels, index: int = 0) -> None:
        self.tensors[(self.node, index)] = labels

    def has_out(self, index: int) -> bool:
        return (self.node, index) in self.tensors

    # -- declarations -------------------------------------------------------------------
    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.space.union(a, b)

    def block(self, labels: np.ndarray, reason: str) -> None:
        self.space.block(labels, f"{reason} at '{self.node}'")

    def pin(self, labels: np.ndarray, reason: str) -> None:
        """Keep the channels of ``labels`` (constants the model's code adds, such as
        padding channels), while the rest of their group stays prunable: unlike
        :meth:`block`, which keeps the whole group."""
        labels = np.asarray(labels, dtype=np.int64).ravel()
        if labels.size:
            self.pins.append((labels, f"{reason} at '{self.node}'"))

    def share(self, pieces: list[np.ndarray]) -> None:
        """Have each of ``pieces`` (labels) keep its own share of its group's kept channels,
        at least one, ranked within itself: sections of a split that the model sizes one by
        one, where ranking them as one could empty a piece (see :mod:`.pieces`)."""
        self.shares.append([np.asarray(p, dtype=np.int64).ravel() for p in pieces])

    def block_tensor(self, labels: TensorLabels, reason: str, dims: Iterable[int] | None = None) -> None:
        for d in (labels if dims is None else dims):
            if d in labels:
                self.block(labels[d], reason)

    def role(self, ref: Ref, dim: int, role: str) -> np.ndarray:
        """Record that dimension ``dim`` of parameter ``ref`` plays ``role``; return its labels."""
        name = self.param_name(ref)
        self.roles.setdefault((name, dim, role), Role(name, dim, role, self.node))
        return self.param_dim(ref, dim)

    def block_contracted(self, labels: np.ndarray, reason: str) -> None:
        """Block a dim two activations contract over (q·k). If the dim is what a split
        reshape carried (a head dim), remember the split: keeping its blocks (heads) whole
        instead makes the contraction harmless, and :func:`find_groups` tries that next."""
        self.keep_blocks_whole(labels)
        self.block(labels, reason)

    def keep_blocks_whole(self, labels: np.ndarray) -> None:
        """If a split reshape carried ``labels`` (the dims of each head), have it keep its
        blocks whole on the next run: the values of attention must lose whole heads, the
        heads their queries and keys lose."""
        self.contracted_splits.update(self.splits.get(int(labels[0]), ()) if labels.size else ())

    def note(self, labels: np.ndarray, kind: str) -> None:
        self.notes.append(Note(np.asarray(labels), kind, self.node))
