"""Dense layers: ``linear``, ``embedding`` and matrix products with a parameter operand."""
from __future__ import annotations

from ..context import CONSUMER, FOLLOWER, SOURCE, RuleContext, TensorLabels
from ..registry import register, unsupported
from .common import broadcast, channel_labels, follow_bias, fresh_blocked, merge_dim
from .parametrized import parametrization_reason
from .weights import underlying_weight


@register("linear")
def linear(ctx: RuleContext) -> None:
    """A weight computed in forward from a parameter, row by row (weight and spectral norm,
    ``W + B @ A``), counts as that parameter."""
    x, weight, bias = ctx.arg(0, "input"), ctx.arg(1, "weight"), ctx.arg(2, "bias")
    nd = len(ctx.shape(x))
    in_labels = channel_labels(ctx, x, nd - 1)
    out = {d: lab for d, lab in ctx.labels(x).items() if d < nd - 1}
    computed = underlying_weight(ctx, weight)
    if computed is not None:
        weight = computed.param
    if ctx.is_param(weight):
        ctx.union(in_labels, ctx.role(weight, 1, CONSUMER))
        out[nd - 1] = ctx.role(weight, 0, SOURCE)
        if computed is not None:
            computed.use(ctx, out[nd - 1], in_labels)
    else:
        reason = parametrization_reason(ctx, weight) or "'linear' with a weight that is not a parameter"
        ctx.block(in_labels, reason)
        out[nd - 1] = fresh_blocked(ctx, ctx.out_shapes[0][-1], reason)
    follow_bias(ctx, bias, out[nd - 1])
    ctx.set_out(out)


@register("embedding")
def embedding(ctx: RuleContext) -> None:
    """An embedding table's columns are new channels; index dims pass through."""
    indices, weight = ctx.arg(0, "input"), ctx.arg(1, "weight")
    out = dict(ctx.labels(indices))
    nd = len(ctx.shape(indices))
    if ctx.is_param(weight):
        out[nd] = ctx.role(weight, 1, SOURCE)
    else:
        out[nd] = fresh_blocked(ctx, ctx.out_shapes[0][-1], "'embedding' with a table that is not a parameter")
    ctx.set_out(out)


@register("matmul", "mm", "bmm")
def matmul(ctx: RuleContext) -> None:
    """``a @ b``: a parameter operand acts as a linear layer; two activations contract.

    Contracting two activations over a prunable dim is only exact if pruned channels are
    truly zero on both sides, which masks do not guarantee, so such dims are blocked.
    """
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other" if ctx.op == "matmul" else "mat2")
    out = _product_labels(ctx, a, b)
    if out is None:
        return unsupported(ctx)
    ctx.set_out(out)


@register("addmm", "baddbmm")
def addmm(ctx: RuleContext) -> None:
    """``bias + a @ b`` (Hugging Face's ``Conv1D`` is ``addmm(bias, x, weight)``): the
    product as in ``matmul``, then the added term broadcast onto it like an ``add``; a
    parameter added along the output channels follows them."""
    bias, a, b = ctx.arg(0, "input"), ctx.arg(1, "mat1" if ctx.op == "addmm" else "batch1"), \
        ctx.arg(2, "mat2" if ctx.op == "addmm" else "batch2")
    product = _product_labels(ctx, a, b)
    if product is None:
        return unsupported(ctx)
    so = ctx.out_shapes[0]
    if ctx.is_param(bias) and len(ctx.shape(bias)) == 1 and ctx.shape(bias)[0] == so[-1] > 1 \
            and len(so) - 1 in product:
        ctx.union(ctx.role(bias, 0, FOLLOWER), product[len(so) - 1])
        ctx.set_out(product)
        return
    sb = ctx.shape(bias)
    out = {}
    for d, n in enumerate(so):
        sd = d - (len(so) - len(sb))
        entries = [(product.get(d), n)] + ([(ctx.labels(bias).get(sd), sb[sd])] if sd >= 0 else [])
        merged = merge_dim(ctx, entries, n, f"'{ctx.op}'")
        if merged is not None:
            out[d] = merged
    ctx.set_out(out)


def _product_labels(ctx: RuleContext, a, b) -> TensorLabels | None:
    """Output labels of ``a @ b`` (roles for a parameter operand), or None if not a matrix product."""
    sa, sb, so = ctx.shape(a), ctx.shape(b), ctx.out_shapes[0]
    if len(sa) < 2 or len(sb) < 2:
        return None
    la, lb = ctx.labels(a), ctx.labels(b)
    ka, kb = len(sa) - 1, len(sb) - 2
    if ctx.is_param(b) and not ctx.is_param(a):
        ctx.union(channel_labels(ctx, a, ka), ctx.role(b, kb, CONSUMER))
        lb = {**lb, len(sb) - 1: ctx.role(b, len(sb) - 1, SOURCE)}
    elif ctx.is_param(a) and not ctx.is_param(b):
        ctx.union(channel_labels(ctx, b, kb), ctx.role(a, ka, CONSUMER))
        la = {**la, len(sa) - 2: ctx.role(a, len(sa) - 2, SOURCE)}
    else:
        for lab in (la.get(ka), lb.get(kb)):
            if lab is not None and lab.size > 1:
                ctx.block_contracted(lab, f"contracted by '{ctx.op}' between two activations")
    nd = len(so)
    out = broadcast(ctx, (a, b), so, trailing=2, labels=(la, lb))
    if (lab := la.get(len(sa) - 2)) is not None:
        out[nd - 2] = lab
    if (lab := lb.get(len(sb) - 1)) is not None:
        out[nd - 1] = lab
    return out
