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

Other computed weights stay blocked by the conv rule: ``torch.nn.utils.parametrize``'s
spectral norm divides every row by one singular value of the whole matrix, which pruning any
row or column changes, so its rows are not separate.
"""
from __future__ import annotations

import numpy as np

from ...trace.refs import Ref
from ..context import Note, RuleContext
from .common import follow_bias

WEIGHT_STATS = "weight_stats"  # note kind: a weight's columns standardised together (masked over kept ones)
_RESHAPES = ("reshape", "view", "reshape_as", "view_as")


def _producer(ctx: RuleContext, ref: object, ops: tuple[str, ...]) -> dict | None:
    """The attributes of the call that produced ``ref`` if its op is one of ``ops``, it has
    no other user (so the computed tensor feeds nothing but this chain) and it is a call."""
    if not isinstance(ref, Ref):
        return None
    attrs = ctx.graph.nodes[ref.node]
    if attrs["kind"] != "call" or attrs["op"] not in ops or ctx.graph.out_degree(ref.node) != 1:
        return None
    return attrs


def standardised_weight(ctx: RuleContext, weight: Ref) -> tuple[Ref, str, list[str]] | None:
    """``(parameter, batch_norm node, chain nodes)`` when ``weight`` is the parameter
    standardised row by row (``reshape_as(batch_norm(param.reshape(1, O, -1), training=True))``),
    else None."""
    back = _producer(ctx, weight, _RESHAPES)
    stats = back and _producer(ctx, back["args"][0], ("batch_norm",))
    rows = stats and _producer(ctx, stats["args"][0], _RESHAPES[:2])
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
    ends = tuple(f" at '{node}'" for node in chain)
    ctx.space.blocks = [(lab, why) for lab, why in ctx.space.blocks if not why.endswith(ends)]
    bn = ctx.graph.nodes[bn_node]
    for index, name in ((3, "weight"), (4, "bias")):
        affine = bn["args"][index] if len(bn["args"]) > index else bn["kwargs"].get(name)
        follow_bias(ctx, affine, rows)
    if cols is not None:
        ctx.notes.append(Note(cols, WEIGHT_STATS, bn_node))
