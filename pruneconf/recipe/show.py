"""``pruneconf show``: a recipe's groups as a table.

By default everything comes from the recipe itself (its values and the summaries ``init``
wrote into its comments), so showing a recipe builds and runs nothing. With a traced model
(``--check``) the channels and cost shares are computed afresh and a stale recipe is flagged.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

from ..groups.explain import channel_width, coarse_steps
from ..table import format_table
from ..trace.where import located
from .generate import SUMMARY_MARK
from .load import Recipe
from .plan import kept_channels

_SUMMARY = re.compile(rf"(\d+) {SUMMARY_MARK} (\d+) layers:.*· MACs ([\d.]+%) · params ([\d.]+%)")
HEADERS = ["group", "channels", "sparsity", "keep", "layers", "MACs", "params"]


def _comment(mapping: Any, key: Any) -> str:
    items = getattr(getattr(mapping, "ca", None), "items", {}).get(key)
    token = items[2] if items and len(items) > 2 else None
    return getattr(token, "value", "") or ""


def _row(recipe: Recipe, center: str, channels: Any, layers: Any, macs: str, params: str) -> list:
    global_mode = recipe.settings.mode == "global"
    sparsity = recipe.sparsity_of(center)
    if recipe.applied.get(center) is not None:
        keep = recipe.applied[center].kept.size
    elif global_mode or not isinstance(channels, int):
        keep = "global" if global_mode else "?"
    else:
        keep = kept_channels(channels, sparsity, recipe.settings.round_to)
    return [center, channels, "global" if global_mode else f"{sparsity:g}", keep, layers, macs, params]


def _table(recipe: Recipe, rows: Sequence[list], blocked: Sequence[str], title: str) -> str:
    lines = [title, "", format_table(HEADERS, rows, numeric=[False] + [True] * 6)]
    if recipe.settings.mode == "global" and not recipe.applied:
        lines += ["", f"mode: global: {recipe.settings.default_sparsity:g} of all channels are ranked together; "
                      "`pruneconf report` (with --weights) shows what each group keeps"]
    if blocked:
        lines += ["", "Not prunable:"] + [f"  {line}" for line in blocked]
    return "\n".join(lines)


def _header_blocked(path: str) -> list[str]:
    """The "Not prunable" lines of the header ``init`` wrote."""
    with open(path, encoding="utf-8") as f:
        header = [line[1:].strip() for line in f.read(1 << 20).splitlines() if line.startswith("#")]
    if "Not prunable (left as they are):" not in header:
        return []
    start = header.index("Not prunable (left as they are):") + 1
    return [line for line in header[start:] if line]


def show_recipe(recipe: Recipe, doc: Any) -> str:
    """The table from the recipe alone (``doc``, its parsed document): channel counts and
    shares from its comments."""
    groups = doc.get("groups") or {}
    rows = []
    for center in groups:
        found = _SUMMARY.search(_comment(groups, center))
        channels, layers, macs, params = (int(found[1]), int(found[2]), found[3], found[4]) if found else \
            ("?", "?", "?", "?")
        rows.append(_row(recipe, str(center), channels, layers, macs, params))
    title = (f"{recipe.path}: {recipe.model or 'model not named'}, {len(rows)} groups "
             "(from the recipe; --check rebuilds the model and recomputes them)")
    return _table(recipe, rows, _header_blocked(recipe.path), title)


def show_traced(recipe: Recipe, groups) -> str:
    """The table from a fresh trace of the recipe's model; groups the model lacks are listed."""
    from ..analysis import group_costs, total_macs, total_params

    graph = groups.graph
    costs, macs, params = group_costs(groups), total_macs(graph), total_params(graph)
    rows = [_row(recipe, g.center, g.channels, len(g.layers), f"{100 * costs[g.center].macs / max(macs, 1):.2f}%",
                 f"{100 * costs[g.center].params / max(params, 1):.2f}%") for g in groups.prunable]
    title = (f"{recipe.path}: {recipe.model}, {len(groups.prunable)} prunable groups of {len(groups)}; "
             f"{macs:,} MACs, {params:,} params")
    text = _table(recipe, rows, [f"{g.center} ({g.channels} ch): {'; '.join(located(r, graph) for r in g.reasons[:3])}"
                                 for g in groups if not g.prunable], title)
    coarse = [f"  {g.center}: {steps}" for g in groups.prunable
              if channel_width(g) > 1 and (steps := coarse_steps(g, graph))]
    if coarse:
        text += ("\n\nGroups that lose whole blocks (a sparsity rounds to whole blocks; the lines fix the "
                 "block):\n" + "\n".join(coarse))
    unknown = [k for k in recipe.sparsity if k not in groups.by_center or not groups[k].prunable]
    if unknown:
        text += "\n\nRecipe groups the model does not have as prunable groups: " + ", ".join(unknown)
    return text
