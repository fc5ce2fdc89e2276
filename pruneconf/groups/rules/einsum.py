"""``torch.einsum``: each subscript letter is one dimension shared by the operands that carry it.

A letter kept in the output couples its operands' channels, like broadcasting. A letter
summed away between an activation and parameters is a dense layer: the parameters'
dimensions consume the activation's channels, and a letter only parameters carry into the
output is a dimension of new channels (``'bchw,oc->bohw'`` is a 1x1 convolution). A letter
contracted between two activations is blocked, as in ``matmul``: masked channels are zero
on one side only. A letter summed out of a single activation is a reduction.
"""
from __future__ import annotations

import dataclasses
import string
from typing import Any

import numpy as np

from ...trace.refs import Ref
from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext
from ..registry import register, unsupported
from .common import channel_labels, merge_dim


def _expand_ellipsis(subs: str, ndim: int, spare: str) -> str:
    """Replace ``...`` by the last ``ndim - len(explicit)`` letters of ``spare``."""
    if "..." not in subs:
        return subs
    k = ndim - (len(subs) - 3)
    return subs.replace("...", spare[len(spare) - k:] if k else "")


def parse_equation(equation: str, ndims: list[int]) -> tuple[list[str], str]:
    """Subscripts of each operand and of the output, ``...`` expanded to spare letters."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    subs = inputs.split(",")
    if len(subs) != len(ndims):
        raise ValueError(f"einsum equation '{equation}' names {len(subs)} operands, got {len(ndims)}")
    widest = max((n - (len(s) - 3) for s, n in zip(subs, ndims) if "..." in s), default=0)
    spare = "".join(c for c in string.ascii_letters if c not in equation)[:widest]
    subs = [_expand_ellipsis(s, n, spare) for s, n in zip(subs, ndims)]
    if arrow:
        output = output.replace("...", spare)
    else:  # implicit output: broadcast dims, then the letters that appear once, sorted
        joined = "".join(subs)
        output = spare + "".join(sorted(c for c in set(joined) if joined.count(c) == 1 and c not in spare))
    return subs, output


@dataclasses.dataclass
class _Use:
    """One operand dimension carrying a letter."""

    ref: Ref
    dim: int
    size: int


def _uses(ctx: RuleContext, operands: list[Ref], subs: list[str]) -> dict[str, list[_Use]]:
    out: dict[str, list[_Use]] = {}
    for ref, s in zip(operands, subs):
        if len(set(s)) != len(s):
            raise ValueError(f"repeated subscript in '{s}' (a diagonal)")
        for dim, letter in enumerate(s):
            out.setdefault(letter, []).append(_Use(ref, dim, ctx.shape(ref)[dim]))
    return out


def _kept(ctx: RuleContext, uses: list[_Use], size: int) -> np.ndarray | None:
    """Labels of an output letter: activations merge, parameters follow or create channels."""
    acts = [u for u in uses if not ctx.is_param(u.ref)]
    params = [u for u in uses if ctx.is_param(u.ref) and u.size > 1]
    if not acts and params:
        first = ctx.role(params[0].ref, params[0].dim, SOURCE)
        for u in params[1:]:
            ctx.union(ctx.role(u.ref, u.dim, FOLLOWER), first)
        return first
    entries = [(ctx.labels(u.ref).get(u.dim), u.size) for u in acts]
    entries += [(ctx.role(u.ref, u.dim, FOLLOWER), u.size) for u in params]
    return merge_dim(ctx, entries, size, "'einsum'")


def _contracted(ctx: RuleContext, letter: str, uses: list[_Use]) -> None:
    """A letter summed away: consumed by parameters, or blocked."""
    acts = [u for u in uses if not ctx.is_param(u.ref)]
    params = [u for u in uses if ctx.is_param(u.ref)]
    if len(acts) == 1 and params:
        labels = channel_labels(ctx, acts[0].ref, acts[0].dim)
        for u in params:
            ctx.union(ctx.role(u.ref, u.dim, CONSUMER), labels)
        return
    reason = (f"contracted by 'einsum' between two activations (letter '{letter}')" if len(acts) > 1
              else f"channels reduced by 'einsum' (letter '{letter}')")
    block = ctx.block_contracted if len(acts) > 1 else ctx.block
    for u in acts:
        lab = ctx.labels(u.ref).get(u.dim)
        if lab is not None and lab.size > 1:
            block(lab, reason)


def _operands(ctx: RuleContext) -> list[Any]:
    rest = ctx.args[1:]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else list(rest)


@register("einsum")
def einsum(ctx: RuleContext) -> None:
    equation, operands = ctx.arg(0, "equation"), _operands(ctx)
    if not isinstance(equation, str) or not all(isinstance(r, Ref) for r in operands):
        return unsupported(ctx)
    subs, output = parse_equation(equation, [len(ctx.shape(r)) for r in operands])
    uses = _uses(ctx, operands, subs)
    out_shape = ctx.out_shapes[0]
    out = {}
    for dim, letter in enumerate(output):
        labels = _kept(ctx, uses[letter], out_shape[dim])
        if labels is not None:
            out[dim] = labels
    for letter, letter_uses in uses.items():
        if letter not in output:
            _contracted(ctx, letter, letter_uses)
    ctx.set_out(out)
