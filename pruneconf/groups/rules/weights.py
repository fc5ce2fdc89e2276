"""Weights computed in ``forward()`` from a parameter, row by row: weight standardisation.

timm's ``StdConv2d`` and ``ScaledStdConv2d`` (NFNet, BiT) standardise each output row of
their weight before every convolution::

    weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                          weight=(self.gain * self.scale).view(-1), training=True, momentum=0.)
    return F.conv2d(x, weight.reshape_as(self.weight), ...)

Each row is standardised over its own input columns and kernel taps, so output row ``o`` of
the computed weight depends only on row ``o`` of the parameter: rows prune exactly, as for an
ordinary convolution, and the affine ``gain`` follows them. Columns are different: the mean
and variance of a row run over all its columns, so the shrunk model standardises over the
kept columns only. The masked model must do the same; the conv's consumer columns are noted
``weight_stats`` at the ``batch_norm`` call, and :mod:`pruneconf.masks.stats` standardises
over the kept columns there (and zeroes the pruned ones) while masks are registered.

Each form of computed weight is one recogniser registered with :func:`computed_weight`
(weight and spectral norm in :mod:`.parametrized`, ``W + B @ A`` in :mod:`.low_rank`); the
conv and linear rules ask :func:`underlying_weight` for the parameter that plays the
weight's role. A weight computed any other way keeps the layer whole.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from ...trace.refs import Ref
from ..context import Note, RuleContext
from .common import follow_bias

WEIGHT_STATS = "weight_stats"  # note kind: a weight's columns standardised together (masked over kept ones)
_RESHAPES = ("reshape", "view", "reshape_as", "view_as")


@dataclasses.dataclass
class Computed:
    """A weight computed in ``forward()`` whose rows and columns are those of ``param``: the
    layer's rule gives ``param`` the weight's roles, then calls ``use(ctx, rows, cols)`` with
    the labels of the layer's output channels and of its input channels (None when whole
    conv groups go, so no column is pruned)."""

    param: Ref
    use: Callable[[RuleContext, np.ndarray, "np.ndarray | None"], None]


Recogniser = Callable[[RuleContext, Ref], "Computed | None"]
_RECOGNISERS: list[Recogniser] = []


def computed_weight(recognise: Recogniser) -> Recogniser:
    """Register a recogniser of one form of computed weight (a decorator)."""
    _RECOGNISERS.append(recognise)
    return recognise


def underlying_weight(ctx: RuleContext, weight: object) -> Computed | None:
    """The parameter behind a weight computed in ``forward()``, when a registered form
    recognises it; None for a parameter (nothing to do) or an unknown computation."""
    if not isinstance(weight, Ref) or ctx.is_param(weight):
        return None
    return next((found for recognise in _RECOGNISERS if (found := recognise(ctx, weight)) is not None), None)


def clear_blocks_at(ctx: RuleContext, nodes: list[str]) -> None:
    """Forget what the ops of a recognised chain blocked: they only compute the weight,
    whose rows and columns the layer's rule follows directly."""
    ends = tuple(f" at '{node}'" for node in nodes)
    ctx.space.blocks = [(lab, why) for lab, why in ctx.space.blocks if not why.endswith(ends)]


def producer(ctx: RuleContext, ref: object, ops: tuple[str, ...]) -> dict | None:
    """The attributes of the call that produced ``ref`` if its op is one of ``ops``, it has
    no other user (so the computed tensor feeds nothing but this chain) and it is a call."""
    if not isinstance(ref, Ref):
        return None
    attrs = ctx.graph.nodes[ref.node]
    if attrs["kind"] != "call" or attrs["op"] not in ops or ctx.graph.out_degree(ref.node) != 1:
        return None
    return attrs


@computed_weight
def standardised(ctx: RuleContext, weight: Ref) -> Computed | None:
    """A weight standardised row by row (timm ``StdConv2d``)."""
    found = standardised_weight(ctx, weight)
    if found is None:
        return None
    return Computed(found[0], lambda ctx, rows, cols: use_standardised(ctx, found, rows, cols))


def standardised_weight(ctx: RuleContext, weight: Ref) -> tuple[Ref, str, list[str]] | None:
    """``(parameter, batch_norm node, chain nodes)`` when ``weight`` is the parameter
    standardised row by row (``reshape_as(batch_norm(param.reshape(1, O, -1), training=True))``),
    else None."""
    back = producer(ctx, weight, _RESHAPES)
    stats = back and producer(ctx, back["args"][0], ("batch_norm",))
    rows = stats and producer(ctx, stats["args"][0], _RESHAPES[:2])
    if not rows:
        return None
    param = rows["args"][0]
    args = stats["args"] + (None,) * 8
    training = stats["kwargs"].get("training", args[5])
    running = stats["kwargs"].get("running_mean", args[1])
    if not ctx.is_param(param) or running is not None or not training:
        return None
    shape, flat = ctx.shape(param), tuple(rows["out_shapes"][0])
    if ctx.shape(weight) != shape or flat[:2] != (1, shape[0]) or len(flat) != 3:
        return None
    return param, back["args"][0].node, [back["args"][0].node, stats["args"][0].node, weight.node]


def use_standardised(ctx: RuleContext, found: tuple[Ref, str, list[str]], rows: np.ndarray,
                     cols: np.ndarray | None) -> None:
    """Make the standardising chain harmless: its reshapes merged the parameter's columns
    with its kernel taps, which blocks them, but the chain only feeds this conv, whose rows
    (``rows``) and columns (``cols``, the parameter's labels) are followed directly. The
    affine gain follows the rows; the columns are noted for masked standardisation (a
    grouped conv prunes whole conv groups, ``cols`` None: every kept row keeps its columns)."""
    param, bn_node, chain = found
    clear_blocks_at(ctx, chain)
    bn = ctx.graph.nodes[bn_node]
    for index, name in ((3, "weight"), (4, "bias")):
        affine = bn["args"][index] if len(bn["args"]) > index else bn["kwargs"].get(name)
        follow_bias(ctx, affine, rows)
    if cols is not None:
        ctx.notes.append(Note(cols, WEIGHT_STATS, bn_node))
