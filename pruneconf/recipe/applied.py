"""The ``applied`` section: what a prune actually kept, written back into the recipe."""
from __future__ import annotations

from typing import Iterable

from ruamel.yaml.comments import CommentedMap

from ..masks import PruningPlan


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


def applied_section(plan: PruningPlan) -> CommentedMap:
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
