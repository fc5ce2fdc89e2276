"""Where in the model's own code something happened: ``file:line`` for reasons people act on.

A group left whole because a size is fixed somewhere is only actionable if the message says
where: the trace records, for every op, the innermost line outside torch and pruneconf that
called it (the model's ``forward``, or a library such as timm that the model is built from),
and a shrunk model that fails to run names the line it failed at.
"""
from __future__ import annotations

import os
import re
import sys
import types

import torch

_LIBRARIES = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                   for m in (torch, sys.modules[__name__.split(".")[0]]))
_AT_NODE = re.compile(r" at '([^']*)'")


def _is_model_code(filename: str) -> bool:
    return not filename.startswith("<") and not os.path.abspath(filename).startswith(_LIBRARIES)


def _short(code: types.CodeType, line: int | None) -> str:
    parts = os.path.abspath(code.co_filename).split(os.sep)
    return f"{os.sep.join(parts[-2:])}:{line}"


def caller_line(skip: int = 1) -> str | None:
    """``dir/file.py:line`` of the innermost caller that is model code, or None."""
    frame = sys._getframe(skip + 1)
    while frame is not None:
        if _is_model_code(frame.f_code.co_filename):
            return _short(frame.f_code, frame.f_lineno)
        frame = frame.f_back
    return None


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


__all__ = ["caller_line", "failing_line", "located"]
