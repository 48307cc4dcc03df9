"""The import structure of ``adray``: no import cycle, and the layering rules (ast only, nothing imported).

Every ``import`` counts, at module level and inside functions alike: a function-local import is still a
dependency (it was how the two cycles this test found were hidden), so a cycle through one fails too.
Imports under ``if TYPE_CHECKING:`` are for type checkers only and are skipped. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module, else to ``pkg``; importing a module's parent packages
(Python runs their ``__init__``) is not counted, as every submodule would otherwise depend on its package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: room -> rooms it must never import (a module's dotted name starts with a room)
LAYERS = {
    "adray.detectors": ("adray.pipeline", "adray.commands", "adray.cli", "adray.train", "adray.bench"),
    "adray.train": ("adray.commands", "adray.cli"),
    "adray.bench": ("adray.commands", "adray.cli"),
    "adray.backbones": ("adray.detectors", "adray.pipeline", "adray.commands", "adray.cli"),
}
#: cycles known and not yet broken, each with why; the test fails when one is gone (delete it here then)
#: or when any other cycle appears. (adray.labels <-> adray.pipeline.query is gone: labels reads the
#: results through adray.pipeline.results_store.)
KNOWN_CYCLES: list[list[str]] = []
#: forwarding shims kept for old ``python -m`` commands (documented in READMEs): allowed their one import
SHIMS = {
    "adray.detectors.bgad.compare": {"adray.bench.bgad_compare"},
    "adray.train.m3dm_compare": {"adray.bench.m3dm_compare"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "adray").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The adray modules ``name`` imports anywhere in its file (TYPE_CHECKING blocks excepted)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    stem = package[: len(package) - child.level + 1]
                    base = ".".join(stem + ([child.module] if child.module else []))
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walker_sees_imports_and_cycles():
    # the walker itself: a known edge, and a made-up cycle is found
    modules = _modules()
    assert "adray.detectors.registry" in _imports(
        "adray.detectors.base", modules["adray.detectors.base"], modules
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_adray_modules(graph):
    cycles = sorted(_cycles(graph))
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles (module-level or function-local imports): " + "; ".join(
        " <-> ".join(c) for c in new
    )
    gone = [c for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these known cycles are broken now: remove them from KNOWN_CYCLES: {gone}"


def test_layering(graph):
    broken = []
    for name, imported in sorted(graph.items()):
        for room, forbidden in LAYERS.items():
            if name != room and not name.startswith(room + "."):
                continue
            for target in sorted(imported - SHIMS.get(name, set())):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    broken.append(f"{name} imports {target}")
    assert not broken, "layering rules broken:\n" + "\n".join(broken)


def test_shims_only_forward(graph):
    for name, allowed in SHIMS.items():
        assert graph[name] == allowed, f"{name} should only forward to {allowed}, imports {graph[name]}"
