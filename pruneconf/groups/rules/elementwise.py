"""Elementwise ops: channels pass through unchanged and broadcasting operands are coupled."""
from __future__ import annotations

from ..context import FOLLOWER, RuleContext
from ..registry import register
from .common import broadcast, channel_labels, passthrough

UNARY = (
    "relu", "relu6", "hardtanh", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "elu", "selu", "celu", "leaky_relu", "rrelu", "softplus", "softsign", "mish", "logsigmoid",
    "tanhshrink", "hardshrink", "softshrink", "threshold", "abs", "neg", "exp", "exp2",
    "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "reciprocal", "sign", "sgn",
    "floor", "ceil", "round", "trunc", "frac", "square", "erf", "erfc", "erfinv", "sin", "cos",
    "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "nan_to_num",
    "logit", "bitwise_not", "logical_not", "isnan", "isinf", "isfinite",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "contiguous", "clone", "detach", "data", "to", "type", "float", "double", "half", "bfloat16",
    "int", "long", "bool", "cpu", "cuda", "requires_grad", "zero", "fill", "normal", "uniform",
    "bernoulli", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "randint_like", "type_as", "positive", "real", "conj", "resolve_conj", "resolve_neg",
    "detach_copy", "native_dropout",
)
NARY = (
    "add", "sub", "rsub", "mul", "div", "floor_divide", "remainder", "fmod", "mod", "pow",
    "float_power", "maximum", "minimum", "fmax", "fmin", "atan2", "hypot", "eq", "ne", "lt",
    "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or",
    "bitwise_xor", "where", "masked_fill", "lerp", "addcmul", "addcdiv", "copy", "xlogy",
    "clamp", "clamp_min", "clamp_max", "copysign", "heaviside", "nextafter", "ldexp",
)


@register(*UNARY)
def unary(ctx: RuleContext) -> None:
    """Shape-preserving one-tensor ops (activations, dropout, casts, ``*_like``)."""
    passthrough(ctx)


@register(*NARY)
def nary(ctx: RuleContext) -> None:
    """Broadcasting elementwise ops: every operand spanning a dim shares its channels.

    A parameter operand (a layer scale, a position embedding) needs no declared role: it
    becomes a follower of the channels it spans (``RuleContext.all_roles``).
    """
    ctx.set_out(broadcast(ctx, ctx.tensor_args(), ctx.out_shapes[0]))


@register("prelu")
def prelu(ctx: RuleContext) -> None:
    """PReLU's weight is per channel (dim 1) unless it has a single element."""
    x, weight = ctx.arg(0, "input"), ctx.arg(1, "weight")
    labels = ctx.labels(x)
    if ctx.is_param(weight) and ctx.shape(weight) and ctx.shape(weight)[0] > 1:
        cd = 1 if len(ctx.shape(x)) > 1 else 0
        ctx.union(ctx.role(weight, 0, FOLLOWER), channel_labels(ctx, x, cd))
    ctx.set_out(labels)


FACTORIES = (
    "zeros", "ones", "empty", "full", "arange", "range", "linspace", "logspace", "eye", "rand",
    "randn", "randint", "randperm", "tensor", "as_tensor", "from_numpy", "scalar_tensor",
    "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "empty_strided",
)


@register(*FACTORIES)
def factory(ctx: RuleContext) -> None:
    """A tensor built in forward from sizes in the code: its channels cannot shrink.

    Its tensor argument (``x.new_zeros(...)``) only lends dtype and device, so it is not
    coupled with anything.
    """
    for i, shape in enumerate(ctx.out_shapes):
        ctx.set_out(ctx.blocked_labels(shape, f"tensor created with fixed sizes at '{ctx.node}'"), i)
