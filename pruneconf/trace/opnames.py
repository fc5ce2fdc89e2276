"""Canonical op names for the functions ``TorchFunctionMode`` hands us.

``torch.add``, ``Tensor.add``, ``Tensor.__add__``, ``Tensor.__radd__`` and ``Tensor.__iadd__``
all mean one thing to a channel rule. Normalising them here lets each rule register under a
single name and keeps the graph readable.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

# Dunder names whose plain form differs from the torch function of the same meaning.
_ALIASES = {
    "truediv": "div", "true_divide": "div", "floordiv": "floor_divide", "divide": "div",
    "multiply": "mul", "subtract": "sub", "concat": "cat", "concatenate": "cat",
    "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor", "invert": "bitwise_not",
    "lshift": "bitwise_left_shift", "rshift": "bitwise_right_shift",
    "swapaxes": "transpose", "swapdims": "transpose", "clip": "clamp", "absolute": "abs",
    "negative": "neg", "arctan": "atan", "greater": "gt", "less": "lt", "greater_equal": "ge",
    "less_equal": "le", "not_equal": "ne", "moveaxis": "movedim", "matrix_power": "matrix_power",
}
_REFLECTABLE = {"add", "sub", "mul", "truediv", "floordiv", "div", "pow", "matmul", "mod",
                "and", "or", "xor", "lshift", "rshift"}


class OpName(NamedTuple):
    op: str          # canonical name rules register under, e.g. "add"
    inplace: bool    # the op writes into its first argument (``add_``, ``__iadd__``, ``__setitem__``)
    reflected: bool  # ``__radd__`` style: the operands arrive swapped


def canonical_name(func: Callable[..., Any]) -> OpName:
    """Map a function seen by ``__torch_function__`` to its canonical :class:`OpName`."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # property access such as ``x.T`` or ``x.data``
        owner = getattr(func, "__self__", None)
        return OpName(getattr(owner, "__name__", "getattr"), False, False)
    inplace = reflected = False
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name == "setitem":
            return OpName("setitem", True, False)
        if name.startswith("i") and name[1:] in _REFLECTABLE:
            name, inplace = name[1:], True
        elif name.startswith("r") and name[1:] in _REFLECTABLE:
            name, reflected = name[1:], True
    elif name.endswith("_") and not name.startswith("_"):
        name, inplace = name[:-1], True
    return OpName(_ALIASES.get(name, name), inplace, reflected)


def qualified_name(func: Callable[..., Any]) -> str:
    """A readable dotted name of ``func`` for the graph's ``target`` attribute."""
    owner = getattr(func, "__self__", None)
    if getattr(func, "__name__", "") == "__get__" and owner is not None:
        return f"Tensor.{getattr(owner, '__name__', '?')}"
    module = getattr(func, "__module__", None) or ""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    qual = qual.replace("_VariableFunctionsClass.", "").replace("TensorBase.", "Tensor.")
    if qual.startswith("Tensor."):
        return qual
    return f"{module}.{qual}" if module else qual
