"""Reading a small JSON input file (a transformers ``config.json``, a safetensors index) safely.

Both are data a user hands over; a huge file, a device such as ``/dev/zero`` or bad JSON must be
a located one-line error read in bounded time and memory, never a traceback.
"""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import ConfigError


def read_json(path: str | os.PathLike, limit: int, what: str, key: str) -> Any:
    """The parsed contents of ``path`` (at most ``limit`` bytes of UTF-8 JSON), else a
    :class:`ConfigError` naming the file, ``what`` it should be and ``key``."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", path=str(path), key=key) from None
    if len(raw) > limit:
        raise ConfigError(f"larger than {limit >> 20} MiB: not a {what}", path=str(path), key=key)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"not a JSON {what}: {exc}", path=str(path), key=key) from None
