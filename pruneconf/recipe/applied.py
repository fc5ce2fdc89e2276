"""The ``applied`` section: what a prune actually kept, written back into the recipe.

With it a recipe is enough to rebuild a pruned model from the original architecture
(:func:`pruneconf.load_pruned`): no pickled model, no guessing which channels were kept.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
from ruamel.yaml.comments import CommentedMap



MAX_CHANNELS = 1 << 24  # more than any layer has: bounds what a recipe can make us allocate
EXPERTS_APPLIED = ("experts", "kept", "indices")  # keys of an experts module's entry


@dataclasses.dataclass(frozen=True)
class Applied:
    """One group as it was pruned."""

    channels: int
    kept: np.ndarray  # sorted group channel indices
    sparsity: float


def parse_ranges(text: str, limit: int) -> np.ndarray:
    """``"0-2,5,7-8"`` -> ``[0, 1, 2, 5, 7, 8]``; raises ValueError on anything else.

    Every index must be below ``limit`` (the group's channel count), checked on the bounds
    before anything is expanded: ``0-999999999999`` costs nothing to refuse.
    """
    expected = f"expected ranges like '0-3,5,7-9' below {limit}, got {str(text)[:60]!r}"
    if not isinstance(text, str) or limit > MAX_CHANNELS:
        raise ValueError(expected)
    keep = np.zeros(limit, dtype=bool)
    for part in text.split(","):
        lo, _, hi = (s.strip() for s in part.partition("-"))
        hi = hi or lo
        if not all(s.isascii() and s.isdigit() for s in (lo, hi)) or not int(lo) <= int(hi) < limit:
            raise ValueError(expected)
        keep[int(lo):int(hi) + 1] = True
    return np.flatnonzero(keep)


def ranges(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``: short and diff-friendly."""
    parts, run = [], []
    for i in sorted(indices):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [i]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def record_calibration(doc: CommentedMap, batches: int) -> None:
    """Note under ``settings`` how many calibration batches the data metric ranked by.
    The data itself is never named in a recipe: it is the user's to give each time."""
    settings = doc.setdefault("settings", CommentedMap())
    settings["calibration_batches"] = batches
    if isinstance(settings, CommentedMap):
        settings.yaml_add_eol_comment("batches the data metric was calibrated on (a record; the data is not "
                                      "stored)", "calibration_batches")
