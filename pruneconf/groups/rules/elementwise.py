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
    "empty", "arange", "range", "linspace", "logspace", "eye", "rand",
    "randn", "randint", "randperm", "tensor", "as_tensor", "from_numpy", "scalar_tensor",
    "new_empty", "new_tensor", "empty_strided",
)
# Factories that fill every element with one value (``position_bias = torch.zeros(1,
# self.n_heads, q, k)``): any subset of their channels is the same tensor, smaller.
UNIFORM_FACTORIES = ("zeros", "ones", "full", "new_zeros", "new_ones", "new_full")
# Modules known to build such a tensor from their input's sizes, and the dims so sized: only
# these carry channels. torchvision's ``MultiScaleRoIAlign`` fills ``zeros(rois, x.shape[1],
# ph, pw)`` level by level (``torchvision/ops/poolers.py``, ``_multiscale_roi_align``:
# ``num_channels = x_filtered[0].shape[1]``); its RoI and bin dims are not channels.
SIZED_BY_INPUT = {"MultiScaleRoIAlign": (1,)}


@register(*FACTORIES)
def factory(ctx: RuleContext) -> None:
    """A tensor built in forward from sizes in the code: its channels cannot shrink.

    Its tensor argument (``x.new_zeros(...)``) only lends dtype and device, so it is not
    coupled with anything.
    """
    for i, shape in enumerate(ctx.out_shapes):
        ctx.set_out(ctx.blocked_labels(shape, f"tensor created with fixed sizes at '{ctx.node}'"), i)


@register(*UNIFORM_FACTORIES)
def uniform_factory(ctx: RuleContext) -> None:
    """A tensor of one value everywhere: its channels may shrink with whatever it meets.

    Dropping channels of a constant tensor leaves the same constant, so masked and shrunk
    agree wherever the smaller tensor is built. Its size is the model's number, usually a
    size attribute (``self.n_heads``) that apply updates like a reshape's
    (:mod:`pruneconf.apply.attributes`), or one the model reads from its input (the dims
    :data:`SIZED_BY_INPUT` names); a literal that cannot follow is caught by the dry run.
    """
    sized = SIZED_BY_INPUT.get(ctx.attrs.get("module_type"))
    for i, shape in enumerate(ctx.out_shapes):
        dims = [d for d in sized if d < len(shape)] if sized is not None else range(len(shape))
        ctx.set_out({d: ctx.space.new(shape[d]) for d in dims if shape[d] > 1}, i)
