"""Export a traced graph for other tools: GraphML (yEd, Gephi, networkx) and Graphviz DOT."""
from __future__ import annotations

import io
import json
from typing import Any

import networkx as nx

from .refs import Ref


def _plain(value: Any) -> Any:
    """Attribute values GraphML can hold: scalars stay, the rest becomes readable text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, default=lambda v: repr(v) if isinstance(v, Ref) else str(v))


def exportable(graph: nx.DiGraph) -> nx.DiGraph:
    """A copy of ``graph`` whose node and edge attributes are all plain scalars."""
    out = nx.DiGraph()
    for node, attrs in graph.nodes(data=True):
        out.add_node(node, **{k: _plain(v) for k, v in attrs.items() if v not in (None, "")})
    for u, v, attrs in graph.edges(data=True):
        out.add_edge(u, v, **{k: _plain(x) for k, x in attrs.items()})
    return out


def to_graphml(graph: nx.DiGraph) -> str:
    return "\n".join(nx.generate_graphml(exportable(graph)))


def to_dot(graph: nx.DiGraph) -> str:
    """Graphviz DOT: one box per op labelled with its name, op and output shape."""
    buf = io.StringIO()
    buf.write("digraph pruneconf {\n  rankdir=TB;\n  node [shape=box, fontsize=10];\n")
    for node, attrs in sorted(graph.nodes(data=True), key=lambda kv: kv[1]["order"]):
        shapes = " ".join("x".join(map(str, s)) for s in attrs["out_shapes"])
        label = f"{node}\\n{attrs['op']} {shapes}".replace('"', "'")
        style = ', style=filled, fillcolor="#eeeeee"' if attrs["kind"] in ("param", "buffer") else ""
        buf.write(f'  "{node}" [label="{label}"{style}];\n')
    for u, v in graph.edges():
        buf.write(f'  "{u}" -> "{v}";\n')
    buf.write("}\n")
    return buf.getvalue()
