"""Build models and example inputs from command-line specs and recipes.

``MODEL`` is ``module:callable`` (``torchvision.models:resnet50``, ``timm.models:resnet50``),
``path/to/file.py:callable``, ``transformers:LlamaForCausalLM`` (config fields as arguments)
or a transformers ``config.json``. The callable is called with the ``--model-arg`` values and
must return an ``nn.Module``. Nothing is downloaded: zoo constructors build randomly
initialised models. A spec read from a recipe is only built if it is in the model zoos of
:mod:`pruneconf.zoo`, unless the caller trusts it (see README, "Security").
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError, first_line

DTYPES = {"float": torch.float32, "float32": torch.float32, "float16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "long": torch.int64, "int64": torch.int64, "int": torch.int32, "int32": torch.int32,
          "bool": torch.bool}
DTYPE_NAMES = {torch.float32: "float", torch.float16: "float16", torch.bfloat16: "bfloat16",
               torch.float64: "float64", torch.int64: "long", torch.int32: "int32", torch.bool: "bool"}
MAX_INPUT_ELEMENTS = 1 << 28  # all example inputs together: 1 GiB of float32
MAX_INPUT_DIMS = 12


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One example input: its shape, dtype and, for a keyword argument, its name."""

    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    name: str | None = None

    def __str__(self) -> str:
        """The ``--input-shape`` text that parses back to this spec."""
        text = ",".join(map(str, self.shape))
        if self.dtype != torch.float32:
            text += f":{DTYPE_NAMES[self.dtype]}"
        return f"{self.name}={text}" if self.name else text


def _import(module: str, key: str) -> Any:
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module)
        if not path.is_file():
            raise ConfigError(f"no such file: {module}", key=key)
        spec = importlib.util.spec_from_file_location(f"pruneconf_user_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import '{module}': {exc}", key=key) from None


def load_callable(spec: str, key: str = "MODEL") -> Any:
    """Import ``module:callable`` or ``file.py:callable`` (the callable may be dotted).

    This runs the code it names: call it only for specs the user gave (the command line).
    """
    module, sep, attr = spec.rpartition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"expected {key} as 'module:callable' or 'file.py:callable', got '{spec}'", key=key)
    obj = _import(module, key)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"'{module}' has no attribute '{attr}'", key=key)
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"'{spec}' is not callable", key=key)
    return obj


def _builder(spec: str, trusted: bool, refuse: Callable[[str, str], Exception]) -> Callable[..., Any]:
    """The zoo's builder for ``spec`` (built the same way whoever names it), else, for a
    trusted spec only, whatever ``module:callable`` it names."""
    from .zoo import refusal, zoo_builder

    builder = zoo_builder(spec)
    if builder is not None:
        return builder
    if trusted:
        return load_callable(spec)
    raise refuse(refusal(spec), "model")


def build_model(spec: str, kwargs: Mapping[str, Any] | None = None, *, trusted: bool = True,
                refuse: Callable[[str, str], Exception] | None = None, device: str | None = None) -> nn.Module:
    """Build the model ``spec`` names with ``kwargs``.

    ``trusted`` is for a spec the user gave (command line, code). An untrusted one, read from
    a recipe, is only built from the zoo allow-list with plain arguments; ``refuse(message,
    key)`` makes the located error (the recipe's file and line). ``device`` is the default
    device while building: ``"meta"`` gives every parameter a shape and no storage, so a
    model of any size builds in a moment (see :mod:`pruneconf.meta`).
    """
    from .zoo import check_plain_arguments

    refuse = refuse or (lambda message, key: ConfigError(message, key=key))
    kwargs = dict(kwargs or {})
    builder = _builder(spec, trusted, refuse)
    if not trusted:
        check_plain_arguments(spec, kwargs, refuse)
    try:
        with torch.device(device) if device else contextlib.nullcontext():
            model = builder(**kwargs)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - the builder's own complaint about its arguments
        where = f" on the {device} device" if device else ""
        raise ConfigError(f"building '{spec}'{where} failed: {type(exc).__name__}: {first_line(exc)}",
                          key="MODEL") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module", key="MODEL")
    return model



def load_calibration(spec: str) -> Iterable[Any]:
    """Calibration batches from the user's ``module:callable``, named on the command line
    (never in a recipe) and called without arguments; each batch takes the form of the
    example inputs (a tensor, a tuple of positional arguments, a dict of keyword arguments)."""
    fn = load_callable(spec, key="--calibration")
    try:
        batches = fn()
    except Exception as exc:  # noqa: BLE001 - the user's code: report it as bad input
        raise ConfigError(f"'{spec}' failed: {type(exc).__name__}: {exc}", key="--calibration") from exc
    if isinstance(batches, (torch.Tensor, Mapping, str, bytes)) or not isinstance(batches, Iterable):
        raise ConfigError(f"'{spec}' returned {type(batches).__name__}; expected an iterable of batches "
                          "(a list, a generator or a DataLoader)", key="--calibration")
    return batches


def parse_input_shape(text: str) -> InputSpec:
    """``1,3,224,224``, ``1,128:long`` or ``input_ids=1,128:long`` -> an :class:`InputSpec`."""
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = None, text
    elif not name.isidentifier():
        raise ConfigError(f"expected NAME=SHAPE with NAME a keyword argument, got '{text}'", key="--input-shape")
    shape_text, _, dtype_text = rest.partition(":")
    parts = [s.strip() for s in shape_text.replace("x", ",").split(",")]
    if not all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts):
        raise ConfigError(f"expected comma-separated integers like 1,3,224,224, got '{text}'", key="--input-shape")
    shape = tuple(int(p) for p in parts)
    dtype = DTYPES.get(dtype_text.strip() or "float")
    if dtype is None or min(shape) < 1 or len(shape) > MAX_INPUT_DIMS:
        raise ConfigError(f"expected 1 to {MAX_INPUT_DIMS} positive sizes and a dtype among {', '.join(DTYPES)}, "
                          f"got '{text}'", key="--input-shape")
    return InputSpec(shape, dtype, name)


def check_input_sizes(specs: Sequence[InputSpec], key: str = "--input-shape") -> None:
    """Refuse absurd example inputs before allocating them."""
    total = sum(math.prod(s.shape) for s in specs)
    if total > MAX_INPUT_ELEMENTS:
        raise ConfigError(f"example inputs of {total:,} elements; at most {MAX_INPUT_ELEMENTS:,} are allowed "
                          "(the trace needs only a small batch)", key=key)
    named = {s.name is not None for s in specs}
    if len(named) > 1:
        raise ConfigError("name every example input (NAME=SHAPE) or none", key=key)


def example_inputs(specs: Sequence[InputSpec], seed: int = 0, device: str | None = None) -> Any:
    """Random inputs: a tensor, a tuple for several, a dict of keyword inputs when named.
    Integer inputs are small indices (0 or 1), valid for any embedding or index. On the
    ``meta`` device they have shapes and dtypes only, as the model they feed."""
    specs = [s if isinstance(s, InputSpec) else InputSpec(*s) for s in specs]
    check_input_sizes(specs)
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in specs:
        if device == "meta":
            tensors.append(torch.empty(spec.shape, dtype=spec.dtype, device="meta"))
        elif spec.dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=gen).to(device=device, dtype=spec.dtype))
        else:
            tensors.append(torch.randint(0, 2, spec.shape, generator=gen).to(device=device, dtype=spec.dtype))
    if specs and specs[0].name is not None:
        return {s.name: t for s, t in zip(specs, tensors)}
    return tensors[0] if len(tensors) == 1 else tuple(tensors)
