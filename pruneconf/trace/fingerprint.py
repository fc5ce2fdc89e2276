"""A short, stable fingerprint of a traced graph, stored in recipes to detect stale ones."""
from __future__ import annotations

import hashlib
import json

import networkx as nx


def graph_signature(graph: nx.DiGraph) -> list[list]:
    """One row per node in forward order: name, op, and the shape of parameters and buffers.

    Activation shapes are left out, so the same model traced at another input resolution
    keeps its fingerprint; a layer added, removed, renamed or resized changes it.
    """
    rows = []
    for node, attrs in sorted(graph.nodes(data=True), key=lambda kv: kv[1]["order"]):
        if attrs["kind"] in ("param", "buffer"):
            rows.append([node, attrs["kind"], list(attrs["out_shapes"][0])])
        elif attrs["kind"] != "input":
            rows.append([node, attrs["op"]])
    return rows


def fingerprint(graph: nx.DiGraph) -> str:
    """``sha256:`` and 16 hex digits of the graph's signature."""
    payload = json.dumps(graph_signature(graph), separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]
