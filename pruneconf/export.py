"""Export a (pruned) model to ONNX and TorchScript, written atomically.

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``), which handles the plain
modules pruning leaves behind and needs only the ``onnx`` package (``pip install
"pruneconf[export]"``); TorchScript needs nothing extra.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PruneconfError

FORMATS = ("onnx", "torchscript")


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def export(model: nn.Module, example_inputs: Any, path: str | os.PathLike, fmt: str = "onnx",
           opset: int = 17) -> Path:
    """Write ``model`` (in eval mode) as ``fmt`` to ``path``; return the path."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnx") is None:
        raise PruneconfError('ONNX export needs the onnx package: pip install "pruneconf[export]"')
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' deprecation and tracer chatter
            if fmt == "onnx":
                torch.onnx.export(model, _as_tuple(example_inputs), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[f"input_{i}" for i in range(len(_as_tuple(example_inputs)))])
            else:
                torch.jit.trace(model, _as_tuple(example_inputs)).save(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        model.train(training)
    return path
