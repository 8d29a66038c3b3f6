"""The methods registry (`deepmetric.methods.base.METHODS`): one module per method, each with its kind, paper and
doc page, and the page documents it — adding a method without its page fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepmetric.methods import METHODS, Method, register
from deepmetric.methods.base import METHOD_KINDS
from deepmetric.training.config import ParameterError, parse_train

ROOT = Path(__file__).resolve().parents[2]
PAGES_NOT_METHODS = {"baselines.md", "presets.md"}  # the baselines' shared page, the paper presets


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_is_its_own_module_with_its_metadata(name):
    entry = METHODS.entry(name)
    assert entry.module == f"deepmetric.methods.{name}"  # one method per file, named after it
    assert issubclass(entry.obj, Method) and entry.obj.name == name
    assert entry.meta["kind"] in METHOD_KINDS
    authors, _, title = entry.meta["paper"].partition(": ")
    assert authors and title.endswith(")"), entry.meta["paper"]  # "Authors: Title (Venue year)"


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_its_doc_page_or_row(name):
    meta = METHODS.meta(name)
    page = ROOT / meta["doc"]
    assert page.parent == ROOT / "docs" / "methods" and page.is_file(), meta["doc"]
    text = page.read_text()
    first_author = meta["paper"].split(",")[0].split(":")[0].strip()
    if meta["kind"] == "seed":
        assert page.name == f"{name}.md" and text.startswith(f"# `{name}` — ")
        assert first_author in text.split("\n## ", 1)[0]  # the page opens with the paper
    else:
        rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")]
        assert rows and first_author in rows[0], name  # its row in the table of methods (the first table)


def test_every_method_page_belongs_to_a_registered_method():
    pages = {p.name for p in (ROOT / "docs" / "methods").glob("*.md")} - PAGES_NOT_METHODS
    assert pages == {f"{n}.md" for n in METHODS.names(kind="seed")}
    assert {METHODS.meta(n)["doc"] for n in METHODS.names(kind="baseline")} == {"docs/methods/baselines.md"}


def test_register_refuses_a_taken_name_and_an_unknown_kind():
    with pytest.raises(ValueError, match=r"method 'margin' registered twice \(by deepmetric\.methods\.margin"):
        register("margin", kind="baseline", paper="x: y (z)", doc="docs/methods/baselines.md")(type("M", (Method,), {}))
    with pytest.raises(ValueError, match=r"kind must be one of \('seed', 'baseline'\), got 'classic'"):
        register("new_one", kind="classic", paper="x: y (z)", doc="docs/methods/new_one.md")
    assert "new_one" not in METHODS and METHODS["margin"].__name__ == "MarginMethod"


def test_a_misspelt_method_is_named_with_a_suggestion():
    with pytest.raises(ParameterError, match=r"unknown train\.method 'ranked_lst'; did you mean 'ranked_list'\?"):
        parse_train({"method": "ranked_lst"})
    with pytest.raises(ParameterError, match=r"blocks for unknown methods \['triplett'\]"):
        parse_train({"method": "margin", "methods": {"triplett": {}}})
