"""The channel-rule registry: one small function per operator, looked up by op name.

Adding an operator means writing one function and decorating it::

    @register("pixel_shuffle")
    def pixel_shuffle(ctx: RuleContext) -> None:
        ...

An op without a rule is not an error: :func:`unsupported` blocks every channel it touches,
with the op's name as the reason, so the affected groups are reported as not prunable.
"""
from __future__ import annotations

from typing import Callable

from .._registry import Registry
from .context import RuleContext

Rule = Callable[[RuleContext], None]
_RULES = Registry("channel rule")
register = _RULES.register  # register("op", ...) decorates the channel rule of those ops


def rule_for(op: str) -> Rule:
    """The rule of ``op``, or :func:`unsupported` when there is none."""
    return _RULES.get(op, unsupported)


def registered_ops() -> list[str]:
    return sorted(_RULES)


def unsupported(ctx: RuleContext, reason: str | None = None) -> None:
    """Block the channels of every input and give every output blocked labels."""
    reason = reason or f"unsupported op '{ctx.op}'"
    for ref in ctx.tensor_args():
        ctx.block_tensor(ctx.labels(ref), reason)
    for i, shape in enumerate(ctx.out_shapes):
        ctx.set_out(ctx.blocked_labels(shape, f"{reason} at '{ctx.node}'"), i)
