"""No import circles: no first-party module (rsvl_runtime, rsvl_train, rsvl_export, benchmarks) imports, directly or through
others, a module that imports it (docs/design.md, Packages).

The graph is read from the source with ``ast`` (no module is imported), function-level imports
included. ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``; a package's ``__init__`` is a module like any other. Edges through the other first-party
packages count, so a circle that leaves and re-enters ``rsvl_train`` is found too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("rsvl_runtime", "rsvl_train", "rsvl_export", "benchmarks")
CHECKED = FIRST_PARTY


def _modules() -> dict[str, tuple[Path, bool]]:
    mods: dict[str, tuple[Path, bool]] = {}
    for pkg in FIRST_PARTY:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            mods[".".join(parts)] = (f, is_pkg)
    return mods


def _known(name: str, mods: dict[str, tuple[Path, bool]]) -> str | None:
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path, is_pkg: bool, mods: dict[str, tuple[Path, bool]]) -> set[str]:
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            deps.update(filter(None, (_known(a.name, mods) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_pkg else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                dep = full if full in mods else _known(base, mods)
                if dep:
                    deps.add(dep)
    deps.discard(module)
    return deps


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, f, is_pkg, mods) for m, (f, is_pkg) in mods.items()}


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A shortest import path ``start -> ... -> start``, or None."""
    paths = {d: [start, d] for d in graph[start]}
    frontier = list(paths)
    while frontier:
        nxt = []
        for m in frontier:
            if m == start:
                return paths[m]
            for d in sorted(graph.get(m, ())):
                if d not in paths:
                    paths[d] = [*paths[m], d]
                    nxt.append(d)
        frontier = nxt
    return None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # rsvl_train.factory imports the model modules inside a function
    assert {"rsvl_train.models.tsmnet", "rsvl_train.models.cadformer"} <= graph["rsvl_train.factory"]
    assert "rsvl_train.checkpoint_io" in graph["rsvl_train.factory"]


@pytest.mark.parametrize("package", CHECKED)
def test_no_import_circle(package):
    graph = import_graph()
    circles = [c for m in sorted(graph) if m.split(".")[0] == package
               for c in [_cycle_through(m, graph)] if c]
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_models_do_not_import_factory_or_checkpoint():
    """The model modules are leaves of the registry: the factory maps names to their builders."""
    graph = import_graph()
    for m, deps in graph.items():
        if m.startswith("rsvl_train.models"):
            assert not deps & {"rsvl_train.factory", "rsvl_train.checkpoint"}, m
