"""Build models and example inputs from command-line specs.

``MODEL`` is ``module:callable`` (``torchvision.models:resnet50``, ``timm.models:resnet50``)
or ``path/to/file.py:callable``; the callable is called with the ``--model-arg`` values and
must return an ``nn.Module``. Nothing is downloaded: torchvision and timm constructors build
randomly initialised models unless asked otherwise.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .errors import ConfigError

DTYPES = {"float": torch.float32, "float32": torch.float32, "float16": torch.float16,
          "half": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
          "long": torch.int64, "int64": torch.int64, "int": torch.int32, "int32": torch.int32,
          "bool": torch.bool}


def _import(module: str, key: str = "MODEL") -> Any:
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
    """Import ``module:callable`` or ``file.py:callable`` (the callable may be dotted)."""
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


def build_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Import and call ``module:callable`` (the callable may be dotted) to build the model."""
    model = load_callable(spec)(**dict(kwargs or {}))
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


def parse_input_shape(text: str) -> tuple[tuple[int, ...], torch.dtype]:
    """``1,3,224,224`` or ``1,128:long`` -> shape and dtype."""
    shape_text, _, dtype_text = text.partition(":")
    try:
        shape = tuple(int(s) for s in shape_text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"expected comma-separated integers like 1,3,224,224, got '{text}'",
                          key="--input-shape") from None
    dtype = DTYPES.get(dtype_text or "float")
    if dtype is None or not shape or min(shape) < 1:
        raise ConfigError(f"expected a positive shape and a dtype among {', '.join(DTYPES)}, got '{text}'",
                          key="--input-shape")
    return shape, dtype


def example_inputs(shapes: Sequence[tuple[tuple[int, ...], torch.dtype]], seed: int = 0) -> Any:
    """Random inputs (a tensor, or a tuple for several); integer inputs are small indices."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for shape, dtype in shapes:
        if dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=gen).to(dtype))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=gen).to(dtype))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)
