"""The package layering holds: imports between this project's modules (module-level and function-local alike) point
down only, edge_crossformer <- quantize <- export <- benchmarks, and form no circle; quantize imports nothing of
export. Read statically from the source, so a new import that breaks it fails here."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("edge_crossformer", "quantize", "export", "benchmarks")


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _targets(module: str, node: ast.AST, modules: dict[str, Path]) -> list[str]:
    """The project modules an import statement names (`from pkg import sub` names pkg.sub, not pkg)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if modules[module].name != "__init__.py":
                parts = parts[:-1]
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        names = subs + ([base] if len(subs) < len(node.names) else [])
    out = []
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            out.append(name)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {imported project module: line}} over every import statement, wherever it sits."""
    modules, graph = _modules(), defaultdict(dict)
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, node, modules):
                    graph[module].setdefault(target, node.lineno)
    return graph


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down():
    upward = [f"{m}:{line} -> {t}" for m, ts in import_graph().items() for t, line in ts.items()
              if LAYERS.index(t.split(".")[0]) > LAYERS.index(m.split(".")[0])]
    assert upward == [], upward


def test_no_import_circle():
    assert _cycles(import_graph()) == []


def test_the_checker_sees_a_circle_and_an_upward_arrow():
    graph = {"export.a": {"export.b": 1}, "export.b": {"export.a": 2}, "quantize.q": {"export.a": 3}}
    assert _cycles(graph) == [["export.a", "export.b"]]
    assert LAYERS.index("export") > LAYERS.index("quantize")


def test_no_target_module_imports_another():
    graph = import_graph()
    targets = {m for m in graph if m.startswith("export.") and m.endswith("_target")}
    crossing = [f"{m} -> {t}" for m in targets for t in graph[m] if t in targets]
    assert crossing == [], crossing
