"""``pruneconf show``: a recipe's groups as a table, checked against a fresh trace."""
from __future__ import annotations

import logging
from typing import Any

from ..analysis import group_costs, total_macs, total_params
from ..errors import ConfigError
from ..table import format_table
from .plan import kept_channels
from .yamlio import load_document

log = logging.getLogger(__name__)


def _require(doc: Any, key: str, path: str) -> Any:
    if not isinstance(doc, dict) or doc.get(key) in (None, ""):
        raise ConfigError("missing; expected the value `pruneconf init` wrote", path=path, key=key)
    return doc[key]


def show_recipe(path: str) -> str:
    """Rebuild the recipe's model, trace it and tabulate each group's plan."""
    from ..cli import analyse_model  # the same model building as `init`
    from ..trace.fingerprint import fingerprint

    doc = load_document(path)
    model = _require(doc, "model", path)
    shapes = [",".join(map(str, s)) for s in _require(doc, "input_shapes", path)]
    graph, groups, _ = analyse_model(model, shapes, dict(doc.get("model_args") or {}))
    if doc.get("fingerprint") != fingerprint(graph):
        log.warning("%s: fingerprint %s does not match the model's %s: the recipe is stale",
                    path, doc.get("fingerprint"), fingerprint(graph))
    settings = doc.get("settings") or {}
    default = float(settings.get("default_sparsity", 0.5))
    round_to = int(settings.get("round_to", 1))
    ranked_globally = settings.get("mode") == "global"  # what each group keeps depends on the weights
    entries = doc.get("groups") or {}
    costs, macs, params = group_costs(groups), total_macs(graph), total_params(graph)
    rows = []
    for g in groups.prunable:
        entry = entries.get(g.center) or {}
        sparsity = float(entry.get("sparsity", default))
        keep = "global" if ranked_globally else kept_channels(g.channels, sparsity, round_to)
        rows.append([g.center, g.channels, "global" if ranked_globally else f"{sparsity:g}", keep, len(g.layers),
                     f"{100 * costs[g.center].macs / max(macs, 1):.2f}%",
                     f"{100 * costs[g.center].params / max(params, 1):.2f}%"])
    table = format_table(["group", "channels", "sparsity", "keep", "layers", "MACs", "params"], rows,
                         numeric=[False, True, True, True, True, True, True])
    lines = [f"{path}: {model}, {len(groups.prunable)} prunable groups of {len(groups)}; "
             f"{macs:,} MACs, {params:,} params", "", table]
    if ranked_globally:
        lines += ["", f"mode: global: {default:g} of all channels are ranked together; "
                      "`pruneconf report` (with --weights) shows what each group keeps"]
    unknown = [k for k in entries if k not in groups.by_center or not groups[k].prunable]
    if unknown:
        lines += ["", "Recipe groups the model does not have as prunable groups: " + ", ".join(map(str, unknown))]
    blocked = [g for g in groups if not g.prunable]
    if blocked:
        lines += ["", "Not prunable:"] + [f"  {g.center} ({g.channels} ch): {'; '.join(g.reasons[:3])}" for g in blocked]
    return "\n".join(lines)
