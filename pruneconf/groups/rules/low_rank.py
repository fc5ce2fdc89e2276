"""``W + B @ A``: a low-rank update merged into a weight in ``forward()`` (LoRA).

    F.linear(x, self.weight + (self.lora_B @ self.lora_A) * self.scaling)
    F.conv2d(x, self.weight + (self.lora_B @ self.lora_A).view(self.weight.shape) * self.scaling)

Row ``o`` of the product is row ``o`` of ``B`` times ``A``, and column ``q`` is ``B`` times
column ``q`` of ``A``: so the rows of ``B`` follow the weight's output channels and the
columns of ``A`` its input channels (for a conv, the column ``i * taps + t`` is tap ``t`` of
input channel ``i``, when the product has one row per output channel). The ``matmul``,
scaling and ``add`` rules carry those labels onto ``W``'s for a linear layer; a conv's
update is reshaped from ``(O, I * taps)`` to ``(O, I, kh, kw)``, a split whose outer dim
must carry the channels (see :func:`_follow`). Masks zero the pruned rows of ``B`` and
columns of ``A``, so the update is zero exactly where ``W`` is. The rank (``B``'s columns, ``A``'s
rows) is contracted between two parameters and stays whole. A product with several rows
per output channel (loralib's ``ConvLoRA``, ``kernel_size`` rows each) mixes input channels
into its rows: it is not recognised, and the layer stays whole.
"""
from __future__ import annotations

import math

from ...trace.refs import Ref
from ..context import CONSUMER, SOURCE, RuleContext
from .weights import Computed, computed_weight, producer

_SCALES = ("mul", "div")
_RESHAPES = ("view", "reshape", "view_as", "reshape_as")


def _scaled_by_number(ctx: RuleContext, ref: object) -> object:
    """What ``ref`` scales by a Python number (``delta * self.scaling``), else ``ref``."""
    attrs = producer(ctx, ref, _SCALES)
    if attrs is None or len(attrs["args"]) != 2:
        return ref
    x, s = attrs["args"]
    if isinstance(x, Ref) and isinstance(s, (int, float)):
        return x
    return s if attrs["op"] == "mul" and isinstance(s, Ref) and isinstance(x, (int, float)) else ref


def _product(ctx: RuleContext, delta: object, shape: tuple[int, ...]) -> tuple[Ref, Ref, list[str]] | None:
    """``(B, A, the reshapes between the product and the add)`` when ``delta`` is ``B @ A``
    of two 2-D parameters, maybe scaled and reshaped to ``shape``, with one row of the
    product per output channel."""
    reshapes = []
    for step in (_scaled_by_number, _reshaped, _scaled_by_number):
        before, delta = delta, step(ctx, delta)
        reshapes += [before.node] if delta is not before and step is _reshaped else []
    attrs = producer(ctx, delta, ("matmul", "mm"))
    if attrs is None or len(attrs["args"]) < 2:
        return None
    b, a = attrs["args"][:2]
    if not (ctx.is_param(b) and ctx.is_param(a)) or len(ctx.shape(b)) != 2 or len(ctx.shape(a)) != 2:
        return None
    if ctx.shape(b)[0] != shape[0] or ctx.shape(a)[1] * shape[0] != math.prod(shape):
        return None
    return b, a, reshapes


def _reshaped(ctx: RuleContext, ref: object) -> object:
    """What ``ref`` reshapes (``delta.view(self.weight.shape)``), else ``ref``."""
    attrs = producer(ctx, ref, _RESHAPES)
    return ref if attrs is None else attrs["args"][0]


@computed_weight
def low_rank(ctx: RuleContext, weight: Ref) -> Computed | None:
    """``W + B @ A`` (either order, the update maybe scaled and reshaped) of parameters."""
    attrs = producer(ctx, weight, ("add",))
    if attrs is None or len(attrs["args"]) != 2 or "alpha" in attrs["kwargs"]:
        return None
    for w, delta in (attrs["args"], attrs["args"][::-1]):
        found = ctx.is_param(w) and ctx.shape(w) == ctx.shape(weight) and _product(ctx, delta, ctx.shape(w))
        if found:
            b, a, reshapes = found
            return Computed(w, lambda ctx, rows, cols: _follow(ctx, w, b, a, reshapes))
    return None


def _follow(ctx: RuleContext, w: Ref, b: Ref, a: Ref, reshapes: list[str]) -> None:
    """``B``'s rows are channels as ``W``'s rows are (outputs; inputs for a transposed conv),
    ``A``'s columns (each channel's taps together) as ``W``'s columns are. A reshape of a conv's update
    splits ``I * taps`` into ``(I, kh, kw)``; by default a split's innermost dim carries the
    channels, which would couple every input channel through the taps, so the rules run
    again with the outer dim carrying them. The rank stays blocked where the product
    blocked it."""
    ctx.wanted_outer_splits.update(reshapes)
    # a transposed conv's weight is [C_in, C_out, ...]: its rows consume, its columns produce
    rows, cols = (CONSUMER, SOURCE) if ctx.op.startswith("conv_transpose") else (SOURCE, CONSUMER)
    ctx.union(ctx.role(b, 0, rows), ctx.param_dim(w, 0))
    columns = ctx.param_dim(w, 1)
    ctx.union(ctx.role(a, 1, cols).reshape(len(columns), -1), columns[:, None])
