"""A short, stable fingerprint of a traced graph, stored in recipes to detect stale ones."""
from __future__ import annotations

import hashlib
import json

import networkx as nx


def graph_signature(graph: nx.DiGraph) -> list[list]:
    """One row per node in forward order: name, op, and the shape of parameters and buffers.

    Activation shapes are left out, so the same model traced at another input resolution
    keeps its fingerprint, and so is work that reaches no output (a BatchNorm's step
    counter in train mode), so train and eval traces agree; a layer added, removed,
    renamed or resized changes it.
    """
    live = nx.ancestors(graph, graph.graph["output"])
    rows = []
    for node, attrs in sorted(graph.nodes(data=True), key=lambda kv: kv[1]["order"]):
        if node not in live:
            continue
        if attrs["kind"] in ("param", "buffer"):
            rows.append([node, attrs["kind"], list(attrs["out_shapes"][0])])
        elif attrs["kind"] != "input":
            rows.append([node, attrs["op"]])
    return rows


def fingerprint(graph: nx.DiGraph) -> str:
    """``sha256:`` and 16 hex digits of the graph's signature."""
    payload = json.dumps(graph_signature(graph), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


def parameter_shapes(graph: nx.DiGraph) -> dict[str, str]:
    """Shapes (``64x3x7x7``) of the parameters the forward pass used, in forward order."""
    live = nx.ancestors(graph, graph.graph["output"])
    nodes = sorted((n for n in live if graph.nodes[n]["kind"] == "param"), key=lambda n: graph.nodes[n]["order"])
    shapes = graph.graph["params"]  # a stacked parameter's full shape, not one slice's
    return {graph.nodes[n]["target"]: "x".join(map(str, shapes[graph.nodes[n]["target"]])) or "scalar"
            for n in nodes}


def first_difference(recorded: dict[str, str], current: dict[str, str]) -> str:
    """Name the first parameter added, removed or reshaped between two ``parameter_shapes``."""
    for name, shape in current.items():
        if name not in recorded:
            return f"'{name}' ({shape}) is new in this model"
        if recorded[name] != shape:
            return f"'{name}' is {shape} in this model but {recorded[name]} in the recipe"
    for name, shape in recorded.items():
        if name not in current:
            return f"'{name}' ({shape}) is gone from this model"
    return "the parameters match but the ops between them differ"
