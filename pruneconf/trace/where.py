"""What the trace records about the model's own code: the line of each call, the sizes its
modules hold in attributes, and which layer owns each parameter.

A group left whole because a size is fixed somewhere is only actionable if the message says
where: the trace records, for every op, the innermost line outside torch and pruneconf that
called it (the model's ``forward``, or a library such as timm that the model is built from),
and a shrunk model that fails to run names the line it failed at.

Model code also splits or slices with sizes it stored at construction (MixNet's
``torch.split(x, self.splits, 1)``, DPN's ``x[:, :self.num_1x1_c]``). Such a size can follow
the channels: apply sets the attribute to the kept size. A literal in the code cannot, so
channel rules ask the trace whether a constant they see is held by the module that ran the
call (:meth:`pruneconf.groups.context.RuleContext.size_attribute`).
"""
from __future__ import annotations

import functools
import os
import re
import sys
import types
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

_LIBRARIES = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (torch, sys.modules[__name__.split(".")[0]]))
_AT_NODE = re.compile(r" at '([^']*)'")


@functools.lru_cache(maxsize=4096)
def _is_model_code(filename: str) -> bool:
    """Cached per file name: the trace asks for every frame of every op (an ``abspath``
    each time cost a third of the analysis on op-heavy models)."""
    return not filename.startswith("<") and not os.path.abspath(filename).startswith(_LIBRARIES)


@functools.lru_cache(maxsize=4096)
def _short_file(filename: str) -> str:
    return os.sep.join(os.path.abspath(filename).split(os.sep)[-2:])


def _short(code: types.CodeType, line: int | None) -> str:
    return f"{_short_file(code.co_filename)}:{line}"


def caller_line(skip: int = 1) -> str | None:
    """``dir/file.py:line`` of the innermost caller that is model code, or None."""
    frame = sys._getframe(skip + 1)
    while frame is not None:
        if _is_model_code(frame.f_code.co_filename):
            return _short(frame.f_code, frame.f_lineno)
        frame = frame.f_back
    return None


def caller_names(skip: int = 1) -> tuple[str, ...]:
    """The names (globals and attributes, ``co_names``) the innermost model-code function
    calling uses (see :func:`caller_line`); () when there is none."""
    frame = sys._getframe(skip + 1)
    while frame is not None and not _is_model_code(frame.f_code.co_filename):
        frame = frame.f_back
    return frame.f_code.co_names if frame is not None else ()


def failing_line(exc: BaseException) -> str | None:
    """``dir/file.py:line`` of the innermost model-code frame of ``exc``'s traceback."""
    found, tb = None, exc.__traceback__
    while tb is not None:
        if _is_model_code(tb.tb_frame.f_code.co_filename):
            found = _short(tb.tb_frame.f_code, tb.tb_lineno)
        tb = tb.tb_next
    return found


def located(reason: str, graph) -> str:
    """``reason`` with the model's line of the op it names (``at 'node'``), when known."""
    match = _AT_NODE.search(reason)
    node = graph.nodes.get(match.group(1)) if match else None
    where = node.get("where") if node else None
    return f"{reason} ({where})" if where else reason


def size_attributes(modules: dict[str, nn.Module], paths: set) -> dict[str, dict[str, Any]]:
    """The public int and int-sequence attributes of each module (``modules``: by path)
    that made a call (``self.splits = [240, 240]``, ``self.num_1x1_c``): rules ask whether
    a constant size in a call is one of these, which apply can update
    (:mod:`pruneconf.apply.attributes`)."""
    out = {}
    for path in paths:
        if path is None:
            continue
        found = {name: value for name, value in vars(modules[path]).items()
                 if not name.startswith("_") and _is_size(value)}
        if found:
            out[path] = found
    return out


def _is_size(value: Any) -> bool:
    if type(value) is int:
        return True
    return type(value) in (list, tuple) and bool(value) and all(type(v) is int for v in value)


def owning_layer(mod: nn.Module, path: str, leaf: bool) -> str | None:
    """The layer ``mod``'s own parameters and buffers belong to, or None when each is a
    layer of its own. A built-in torch.nn layer owns its parameters ("features.0.1.running_mean"
    belongs to "features.0.1"); a raw parameter of a custom module (``F.conv2d(x, self.w)``)
    is a layer of its own ("block.w"). A parametrized layer (``torch.nn.utils.parametrize``)
    still owns its weight, held at "conv.parametrizations.weight.original", and the
    parametrization's buffers (spectral norm's ``u`` and ``v``)."""
    layer, parametrized, _ = path.partition(".parametrizations.")
    if parametrized:
        return layer
    builtin = bool(path) and type(mod).__module__.startswith("torch.nn.")
    return path if builtin and (leaf or parametrize.is_parametrized(mod)) else None


__all__ = ["caller_line", "caller_names", "failing_line", "located", "owning_layer", "size_attributes"]
