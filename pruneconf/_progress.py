"""Progress bars for long loops: shown on a terminal, silent in logs, CI and with ``-q``."""
from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    quiet = logging.getLogger("pruneconf").getEffectiveLevel() > logging.INFO or not sys.stderr.isatty()
    return tqdm(items, desc=desc, total=total, disable=quiet, leave=False)
