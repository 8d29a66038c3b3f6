"""The project's own code as data, for the tests that check its shape: which modules `src/deepmetric` has and
which of them each module imports (every ``import`` counts, also one inside a function or under
``TYPE_CHECKING``), and which modules a file outside the package (a pipeline's nodes) reaches."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "deepmetric"


def module_files() -> dict[str, Path]:
    """``{module name: its file}`` for every module of the package (a package is its ``__init__.py``)."""
    files = {}
    for f in (SRC / PACKAGE).rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = f
    return files


def imported_names(path: Path, here: str = "") -> list[str]:
    """Every dotted name an ``import`` of ``path`` names (``from a import b``: ``a`` and ``a.b``); relative imports
    resolved against the package ``here``."""
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out.extend([base] + [f"{base}.{a.name}" for a in node.names])
    return out


def module_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        here = name if f.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for t in imported_names(f, here):
            # the deepest module of the package that the import names
            while t and t not in files:
                t = t.rpartition(".")[0]
            if t and t != name:
                deps.add(t)
        graph[name] = deps
    return graph




def reachable(files: Iterable[Path], graph: dict[str, set[str]]) -> set[str]:
    """The package modules that the imports of ``files`` reach, directly or through each other."""
    known = module_files()
    todo = []
    for f in files:
        for t in imported_names(f):
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t:
                todo.append(t)
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen
