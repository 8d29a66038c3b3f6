"""The shape of the test tree: every module ``src/deepmetric/<pkg>/<mod>.py`` has its tests in
``tests/<pkg>/test_<mod>.py``, and no test module imports another one (shared helpers live in fixture modules:
``tests/*fixtures.py``, helper modules without a ``test_`` prefix, conftest.py)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "deepmetric"
TESTS = REPO / "tests"
# Modules whose tests are still elsewhere or missing (being moved on other branches): remove a name when its
# mirror lands, never add one.
PENDING = {
    "cli/__main__.py",  # `python -m deepmetric.cli`: run by tests/cli/test_main.py
}


def mirror(module: Path) -> Path:
    rel = module.relative_to(SRC)
    return TESTS / rel.parent / f"test_{rel.name}"


def test_every_module_has_its_mirrored_test_module():
    modules = {m.relative_to(SRC).as_posix(): m for m in SRC.rglob("*.py") if m.name != "__init__.py"}
    missing = sorted(name for name, m in modules.items() if not mirror(m).is_file() and name not in PENDING)
    assert not missing, "modules without tests/<pkg>/test_<module>.py: " + ", ".join(missing)


def test_no_test_module_imports_another_test_module():
    found = []
    for f in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # `from tests.x import test_y` names a module too
                names = [node.module or "", *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            found += [f"{f.relative_to(REPO)} imports {n}" for n in names
                      if n.startswith("tests.") and n.rpartition(".")[2].startswith("test_")]
    assert not found, "; ".join(found)
