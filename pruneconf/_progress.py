"""Progress bars for long loops: shown on a terminal, silent in logs, CI and with ``-q``."""
from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _quiet() -> bool:
    return logging.getLogger("pruneconf").getEffectiveLevel() > logging.INFO or not sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    """``items`` with a progress bar."""
    return tqdm(items, desc=desc, total=total, disable=_quiet(), leave=False)


def progress_bar(total: int, desc: str) -> tqdm:
    """A bar to ``update()`` by hand, e.g. once per module a forward pass runs."""
    return tqdm(total=total, desc=desc, disable=_quiet(), leave=False)
