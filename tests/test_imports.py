"""The package graph of `src/deepmetric`: no import cycle between modules or between packages, and the picture in
docs/architecture.md is the graph the code has.

Every ``import`` counts, also one inside a function or under ``TYPE_CHECKING``: a lazy import that closes a cycle is
still a cycle in the design (it only moves the failure from import time to call time).
"""

from __future__ import annotations

import re

from tests.code_fixtures import REPO, module_graph

# Small modules every layer may use; the picture draws them as one node.
FOUNDATION = {"deepmetric", "deepmetric.errors", "deepmetric.io", "deepmetric.parallel", "deepmetric.runtime",
              "deepmetric.registry"}


def package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        for d in deps:
            a, b = package_of(m), package_of(d)
            if a != b:
                out.setdefault(a, set()).add(b)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_packages():
    cycle = find_cycle(package_graph(module_graph()))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def drawn_edges() -> set[tuple[str, str]]:
    text = (REPO / "docs/architecture.md").read_text()
    block = re.search(r"```mermaid\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```mermaid block (the package picture)"
    return set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block.group(1), re.M))


def test_the_architecture_picture_is_the_import_graph():
    def node(pkg: str) -> str:
        return "foundation" if pkg in FOUNDATION else pkg.rpartition(".")[2]

    actual = {(node(a), node(b)) for a, deps in package_graph(module_graph()).items() for b in deps}
    actual = {(a, b) for a, b in actual if a != b}
    drawn = drawn_edges()
    assert drawn == actual, (f"docs/architecture.md's picture differs from the imports: missing arrows "
                             f"{sorted(actual - drawn)}, arrows the code does not have {sorted(drawn - actual)}")
