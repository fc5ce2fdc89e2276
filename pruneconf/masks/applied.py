"""The recipe's ``applied`` section written from a plan (read back by :mod:`pruneconf.recipe.load`)."""
from __future__ import annotations

from ruamel.yaml.comments import CommentedMap

from ..recipe.applied import ranges
from .plan import PruningPlan


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
    for layer, drop in plan.experts.items():
        kept = drop.keep.nonzero()[0].tolist()
        out[layer] = CommentedMap(experts=len(drop.keep), kept=len(kept), indices=ranges(kept))
    return out


__all__ = ["applied_section"]
