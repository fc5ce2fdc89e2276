"""The ``experts`` section: whole experts a mixture-of-experts layer loses, with their router rows.

    settings:
      expert_sparsity: 0.25          # every MoE layer drops a quarter of its experts (default 0)
    experts:
      model.layers.0.mlp.experts:
        drop: [1, 6]                 # exactly these experts
      model.layers.1.mlp.experts:
        sparsity: 0.5                # half of them, the weakest first

Keys are the experts modules (the module holding the stacked expert weights). ``sparsity``
drops ``floor(experts * sparsity)`` experts ranked by the L2 norm of their weights (data
free; list them in ``drop`` to choose by data of your own). A layer keeps at least as many
experts as its router picks per token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import networkx as nx

EXPERT_KEYS = ("drop", "sparsity")


@dataclasses.dataclass(frozen=True)
class ExpertChoice:
    """What one layer's recipe entry asks for: explicit experts, or a fraction."""

    drop: tuple[int, ...] | None = None
    sparsity: float | None = None


def parse_experts(check: Any, doc: Mapping) -> dict[str, ExpertChoice]:
    """``experts.<layer>.drop`` (a list of expert indices) or ``.sparsity`` (a number in [0, 1))."""
    section = check.mapping(doc, "experts", "experts", "a mapping of experts modules")
    out = {}
    for layer, entry in section.items():
        key = f"experts.{layer}"
        check.lines[key] = _line(section, layer)
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise check.fail("expected `drop: [indices]` or `sparsity: fraction`", key, section, layer)
        check.keys(entry, EXPERT_KEYS, f"{key}.")
        if "sparsity" in entry:
            out[str(layer)] = ExpertChoice(sparsity=check.number(entry, "sparsity", f"{key}.sparsity", 0, 1))
            continue
        drop = entry["drop"]
        if not isinstance(drop, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                 for i in drop) or len(set(drop)) != len(drop):
            raise check.fail(f"expected a list of distinct expert indices, got {list(drop)!r}" if isinstance(drop, list)
                             else f"expected a list of expert indices, got {drop!r}", f"{key}.drop", entry, "drop")
        out[str(layer)] = ExpertChoice(drop=tuple(sorted(int(i) for i in drop)))
    return out


def _line(mapping: Any, key: Any) -> int | None:
    try:
        return mapping.lc.key(key)[0] + 1
    except (AttributeError, KeyError, TypeError):
        return None


def expert_layers(graph: nx.DiGraph) -> dict[str, tuple[int, list[str]]]:
    """Experts modules of a traced model: ``path -> (experts, stacked parameters)``."""
    out: dict[str, tuple[int, list[str]]] = {}
    for _, attrs in graph.nodes(data=True):
        if attrs.get("slice") is None:
            continue
        layer = attrs["target"].rpartition(".")[0]
        count, params = out.setdefault(layer, (attrs["full_shape"][0], []))
        if attrs["target"] not in params:
            params.append(attrs["target"])
    return out


def check_experts(recipe: Any, graph: nx.DiGraph) -> None:
    """Every ``experts`` entry names an experts module and experts it has."""
    layers = expert_layers(graph)
    for layer, choice in recipe.experts.items():
        key = f"experts.{layer}"
        if layer not in layers:
            known = ", ".join(sorted(layers)[:3]) or "none in this model"
            raise recipe.error(f"no experts module '{layer}'; expected one of {known}", key)
        count = layers[layer][0]
        if choice.drop and choice.drop[-1] >= count:
            raise recipe.error(f"expert {choice.drop[-1]} does not exist: the layer has {count} experts", f"{key}.drop")
        if choice.drop is not None and len(choice.drop) >= count:
            raise recipe.error(f"drops all {count} experts of the layer", f"{key}.drop")


__all__ = ["EXPERT_KEYS", "ExpertChoice", "check_experts", "expert_layers", "parse_experts"]
