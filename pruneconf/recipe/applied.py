"""The ``applied`` section: what a prune actually kept, written back into the recipe.

With it a recipe is enough to rebuild a pruned model from the original architecture
(:func:`pruneconf.load_pruned`): no pickled model, no guessing which channels were kept.
"""
from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Iterable

import numpy as np
from ruamel.yaml.comments import CommentedMap

if TYPE_CHECKING:  # masks/ reads recipes: import the type only for annotations
    from ..masks import PruningPlan

_RANGES = re.compile(r"^\s*\d+(\s*-\s*\d+)?(\s*,\s*\d+(\s*-\s*\d+)?)*\s*$")


@dataclasses.dataclass(frozen=True)
class Applied:
    """One group as it was pruned."""

    channels: int
    kept: np.ndarray  # sorted group channel indices
    sparsity: float


def parse_ranges(text: str) -> np.ndarray:
    """``"0-2,5,7-8"`` -> ``[0, 1, 2, 5, 7, 8]``; raises ValueError on anything else."""
    if not isinstance(text, str) or not _RANGES.match(text):
        raise ValueError(f"expected ranges like '0-3,5,7-9', got {text!r}")
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return np.array(sorted(set(out)), dtype=np.int64)


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


def applied_section(plan: "PruningPlan") -> CommentedMap:
    """Per pruned group: channels before, channels kept, and which (group channel indices)."""
    out = CommentedMap()
    for g in plan.groups:
        kept = plan.kept.get(g.center)
        if kept is None:
            continue
        entry = CommentedMap(channels=g.channels, kept=len(kept), sparsity=plan.requested[g.center],
                             indices=ranges(kept.tolist()))
        out[g.center] = entry
    return out


def record_calibration(doc: CommentedMap, batches: int) -> None:
    """Note under ``settings`` how many calibration batches the data metric ranked by.
    The data itself is never named in a recipe: it is the user's to give each time."""
    settings = doc.setdefault("settings", CommentedMap())
    settings["calibration_batches"] = batches
    if isinstance(settings, CommentedMap):
        settings.yaml_add_eol_comment("batches the data metric was calibrated on (a record; the data is not "
                                      "stored)", "calibration_batches")
