"""Phase one on the ``meta`` device: a model's structure without its weights.

Tracing, grouping and writing a recipe only need shapes. A model built under
``torch.device("meta")`` has parameters with shapes and no storage, so a 70B-parameter
language model builds and traces in seconds and in about a gigabyte, and its recipe is the
same text as on the CPU (groups, fingerprint, comments, MAC shares: none depend on values).

What meta cannot do is anything that needs values: ``nonzero``, boolean-mask indexing,
``.item()``, Python ``if`` on a tensor (detection heads, MoE routing). Such a model fails to
trace with a located error; ``auto`` then falls back to the CPU.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import networkx as nx
from torch import nn

from .errors import TraceError
from .hf import is_config_path
from .models import InputSpec, build_model, example_inputs
from .trace import trace

log = logging.getLogger("pruneconf")

DEVICES = ("auto", "cpu", "meta")


def prefers_meta(spec: str) -> bool:
    """Transformers models (a class or a ``config.json``) are the large ones, whose random
    initialisation on the CPU costs minutes and their full size in memory."""
    return spec.startswith("transformers:") or is_config_path(spec)


def _values_needed(exc: TraceError) -> TraceError:
    """The trace error, one line, saying why meta failed and what to do."""
    text = str(exc).split(". ")[0].rstrip(".")
    return TraceError(f"on the meta device, {text}: this op needs real values, which meta tensors do not have; "
                      "run with --device cpu")


def build_and_trace(spec: str, kwargs: Mapping[str, Any] | None, specs: Sequence[InputSpec],
                    device: str = "cpu") -> tuple[nn.Module, Any, nx.DiGraph, str]:
    """Build ``spec`` on ``device`` (``auto``: meta for transformers models, else cpu) and
    trace it. Returns the model, its example inputs, the graph and the device used."""
    if device == "auto":
        if not prefers_meta(spec):
            return build_and_trace(spec, kwargs, specs, "cpu")
        try:
            return build_and_trace(spec, kwargs, specs, "meta")
        except TraceError as exc:
            log.info("%s; tracing on the cpu instead", exc)
            return build_and_trace(spec, kwargs, specs, "cpu")
    on_meta = device == "meta"
    model = build_model(spec, kwargs, device="meta" if on_meta else None)
    inputs = example_inputs(specs, device="meta" if on_meta else None)
    try:
        graph = trace(model, inputs)
    except TraceError as exc:
        if not on_meta:
            raise
        raise _values_needed(exc) from exc
    return model, inputs, graph, device


__all__ = ["DEVICES", "build_and_trace", "prefers_meta"]
