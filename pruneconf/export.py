"""Export a (pruned) model to ONNX and TorchScript, written atomically.

ONNX first tries PyTorch's TorchScript-based exporter (``dynamo=False``), which handles the
plain modules pruning leaves behind and needs only ``onnx``. Models it cannot export (e.g.
transformers language models, whose mask code uses ``aten::diff``) go through the
``torch.export``-based exporter (``dynamo=True``), which needs ``onnxscript``; both come with
``pip install "pruneconf[export]"``. TorchScript needs nothing extra. A model neither exporter
handles is a :class:`PruneconfError` naming the operator, never a traceback.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import PruneconfError, first_line

FORMATS = ("onnx", "torchscript")


def _as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _export_onnx(model: nn.Module, inputs: tuple, path: Path, opset: int) -> None:
    names = [f"input_{i}" for i in range(len(inputs))]
    try:
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=opset, input_names=names)
        return
    except Exception as exc:  # noqa: BLE001 - retried with the other exporter below
        if importlib.util.find_spec("onnxscript") is None:
            raise PruneconfError(f"onnx export failed: {type(exc).__name__}: {first_line(exc)}; the "
                                 'torch.export-based exporter may handle it: pip install "pruneconf[export]"') from exc
    torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=max(opset, 18), input_names=names,
                      verbose=False)


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
                _export_onnx(model, _as_tuple(example_inputs), tmp, opset)
            else:
                torch.jit.trace(model, _as_tuple(example_inputs)).save(str(tmp))
        os.replace(tmp, path)
    except PruneconfError:
        raise
    except Exception as exc:  # noqa: BLE001 - the exporters raise many kinds for unsupported code
        raise PruneconfError(f"{fmt} export failed: {type(exc).__name__}: {first_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
        model.train(training)
    return path
