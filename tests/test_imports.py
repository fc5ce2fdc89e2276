"""The package's import structure: no cycles, each pipeline stage importing only the stages
below it, and no module over 400 lines. Imports are read from the source with ``ast``
(every import: top-level, inside functions, under ``TYPE_CHECKING``), so nothing is run."""
from __future__ import annotations

import ast
import pathlib

import networkx as nx

ROOT = pathlib.Path(__file__).resolve().parent.parent / "pruneconf"
# The pipeline, bottom up: a stage may import the ones before it, never the ones after.
STAGES = ["trace", "groups", "analysis", "recipe", "masks", "apply"]
MAX_LINES = 400


def _module_name(path: pathlib.Path) -> str:
    parts = ["pruneconf", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _targets(node: ast.AST, package: str, modules: dict[str, pathlib.Path]) -> list[str]:
    """The pruneconf modules one import statement names (``from . import x`` names module x)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = package
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    stem = (base + ("." + node.module if node.module else "")) if node.level else (node.module or "")
    found = [f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in modules]
    return found or ([stem] if stem in modules else [])


def import_graph() -> nx.DiGraph:
    """Module -> every pruneconf module it imports."""
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            graph.add_edges_from((name, t) for t in _targets(node, package, modules) if t != name)
    return graph


def _stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_the_import_graph_reads_relative_and_absolute_imports():
    graph = import_graph()
    assert graph.has_edge("pruneconf.pruner", "pruneconf.trace")  # from .trace import trace
    assert graph.has_edge("pruneconf.masks.plan", "pruneconf.groups")  # from ..groups import ...
    assert graph.has_edge("pruneconf.groups.rules", "pruneconf.groups.rules.conv")  # from . import conv


def test_no_module_imports_itself_back():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, f"import cycles: {cycles[:5]}"


def test_no_package_imports_itself_back():
    packages = nx.DiGraph()
    for a, b in import_graph().edges:
        if _stage(a) and _stage(b) and _stage(a) != _stage(b):
            packages.add_edge(_stage(a), _stage(b), via=(a, b))
    cycles = list(nx.simple_cycles(packages))
    assert not cycles, [[packages.edges[c[i], c[(i + 1) % len(c)]]["via"] for i in range(len(c))] for c in cycles]


def test_each_stage_imports_only_the_stages_below_it():
    upward = [(a, b) for a, b in import_graph().edges
              if _stage(a) in STAGES and _stage(b) in STAGES and STAGES.index(_stage(b)) > STAGES.index(_stage(a))]
    assert not upward, f"a stage imports one above it: {upward}"


def test_no_module_is_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
