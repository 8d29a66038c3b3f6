"""The two registries of deepmetric.data.readers.base: layouts (how files lie) and datasets (what they are), each
name registered by its module, documented in docs/datasets.md, misspellings answered with the choices."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepmetric.data.config import DataParams, ParamsError, parse_params
from deepmetric.data.readers import DATASETS, LAYOUTS, DatasetLayoutError, read_dataset

ROOT = Path(__file__).resolve().parents[3]


def test_missing_layout_files_are_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="images.txt"):
        read_dataset("cub", tmp_path)
    with pytest.raises(DatasetLayoutError, match="Ebay_train.txt"):
        read_dataset("sop", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset("cub", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        read_dataset("imagenet", tmp_path)


def test_a_misspelt_dataset_is_named_with_the_choices(tmp_path):
    choices = re.escape(", ".join(DATASETS.names()))
    with pytest.raises(ValueError, match=rf"unknown dataset 'cub200'; did you mean 'cub'\? \(choose one of: {choices}\)"):
        read_dataset("cub200", tmp_path)
    with pytest.raises(ParamsError, match=r"data\.dataset = 'sopp': .*did you mean 'sop'"):
        parse_params(DataParams, {"dataset": "sopp"}, "data")
    assert parse_params(DataParams, {"dataset": "inshop"}, "data").dataset == "inshop"


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_is_registered_by_its_module_in_a_registered_layout(name):
    entry = DATASETS.entry(name)
    assert entry.module == f"deepmetric.data.readers.{name}"
    assert entry.meta["kind"] in ("benchmark", "builtin")
    layout = LAYOUTS.entry(entry.obj.layout)
    assert layout.module == f"deepmetric.data.readers.{entry.obj.layout}"
    if entry.meta["kind"] == "benchmark":  # validation compares a benchmark's manifest with its published counts
        info = entry.obj
        assert None not in (info.num_images, info.num_classes, info.num_train_classes, info.num_test_classes)
        assert info.num_train_classes + info.num_test_classes == info.num_classes


def _dataset_rows() -> dict[str, list[str]]:
    """docs/datasets.md's table: | dataset | `data.dataset` | `data.root` | images | classes (train / test) | Recall@K |"""
    text = (ROOT / "docs" / "datasets.md").read_text()
    body = text.split("| dataset | `data.dataset` |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in body]
    return {r[1].strip("`"): r for r in rows}


def _count(cell: str) -> int:
    """A count ("11,318") or a range of class ids ("1–100")."""
    first, dash, last = cell.partition("–")
    return int(last) - int(first) + 1 if dash else int(cell.replace(",", ""))


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_its_row_in_the_docs(name):
    info, row = DATASETS[name], _dataset_rows()[name]
    assert DATASETS.meta(name)["doc"] == "docs/datasets.md"
    assert row[5] == ", ".join(map(str, info.recall_ks))
    if info.num_images is not None:
        assert row[3] == f"{info.num_images:,}"
        total, _, split = row[4].partition(" (")
        train, test = split.rstrip(")").split(" / ")
        assert (_count(total), _count(train), _count(test)) == (
            info.num_classes, info.num_train_classes, info.num_test_classes)


def test_every_documented_dataset_is_registered():
    assert sorted(_dataset_rows()) == DATASETS.names()


def _layout_rows() -> dict[str, list[str]]:
    """docs/datasets.md's layout table: | layout | `data.layout` | kind | reads |"""
    text = (ROOT / "docs" / "datasets.md").read_text()
    body = text.split("| layout | `data.layout` |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in body]
    return {r[1].strip("`"): r for r in rows}


def test_every_layout_has_its_row_in_the_docs_with_its_kind():
    rows = _layout_rows()
    assert sorted(rows) == LAYOUTS.names()
    assert {name: row[2] for name, row in rows.items()} == {name: LAYOUTS.meta(name)["kind"] for name in rows}
    assert LAYOUTS.names(kind="generic") == ["folder", "table"]
