from __future__ import annotations

import re
from pathlib import Path

import pytest

from deepmetric.data.config import DataParams, ParamsError, parse_params
from deepmetric.data.readers import DATASETS, LAYOUTS, READER_COLUMNS, DatasetLayoutError, read_dataset
from tests.data.layouts import make_cars, make_cub, make_inshop, make_sop

ROOT = Path(__file__).resolve().parents[2]


def _summary(df):
    return {s: (int((df.split == s).sum()), int(df.loc[df.split == s, "label"].nunique())) for s in ("train", "val", "test")}


def test_cub_splits_by_class_ignores_classification_split_and_appledouble(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", num_classes=4, per_class=3)
    df = read_dataset("cub", root)
    assert tuple(df.columns) == READER_COLUMNS
    assert len(df) == 12 and not df.path.str.contains("/._").any()
    assert _summary(df) == {"train": (6, 2), "val": (0, 0), "test": (6, 2)}
    assert set(df.loc[df.split == "train", "label"]) == {1, 2}  # classes 1..n/2 (CUB: 1-100)
    assert set(df.loc[df.split == "test", "label"]) == {3, 4}
    assert (df.role == "both").all() and (df.dataset == "cub").all()
    row = df[df.path == "images/003.Bird_3/Bird_3_0001.jpg"].iloc[0]
    assert (row.label, row.class_name, row.split) == (3, "Bird_3", "test")
    assert all((root / p).is_file() for p in df.path)


def test_val_slice_fraction_and_count(tmp_path):
    root = make_cub(tmp_path / "cub", num_classes=10, per_class=2, appledouble=False)
    df = read_dataset("cub", root, {"val_classes": 0.4})
    assert _summary(df) == {"train": (6, 3), "val": (4, 2), "test": (10, 5)}
    assert set(df.loc[df.split == "val", "label"]) == {4, 5}  # the last train classes
    df2 = read_dataset("cub", root, {"val_classes": 1})
    assert set(df2.loc[df2.split == "val", "label"]) == {5}
    with pytest.raises(ValueError, match="leave at least one class"):
        read_dataset("cub", root, {"val_classes": 5})


@pytest.mark.parametrize("devkit", [False, True])
def test_cars196_both_distributions(tmp_path, devkit):
    root = make_cars(tmp_path / "cars", num_classes=4, per_class=3, devkit=devkit)
    df = read_dataset("cars196", root, {"val_classes": 1})
    assert len(df) == 12
    assert _summary(df) == {"train": (3, 1), "val": (3, 1), "test": (6, 2)}
    assert set(df.loc[df.split == "test", "label"]) == {3, 4}  # classes 99-196 of 196
    assert df.loc[df.label == 2, "class_name"].unique().tolist() == ["Make Model 2 2012"]
    assert all((root / p).is_file() for p in df.path)
    if devkit:
        assert df.path.str.startswith("cars_train/").any() and df.path.str.startswith("cars_test/").any()


def test_cars196_unlabelled_test_file_is_named(tmp_path):
    from scipy.io import savemat

    root = make_cars(tmp_path / "cars", devkit=True)
    (root / "cars_test_annos_withlabels.mat").unlink()
    savemat(root / "cars_test_annos.mat", {"annotations": {"fname": "x.jpg"}})
    with pytest.raises(DatasetLayoutError, match="cars_test_annos_withlabels.mat"):
        read_dataset("cars196", root)


def test_sop_train_and_test_files(tmp_path):
    root = make_sop(tmp_path / "Stanford_Online_Products", train_classes=4, test_classes=3, per_class=2)
    df = read_dataset("sop", root, {"val_classes": 0.25})
    assert _summary(df) == {"train": (6, 3), "val": (2, 1), "test": (6, 3)}
    assert set(df.loc[df.split == "test", "label"]) == {5, 6, 7}
    assert df.class_name.iloc[0].split("/")[0] in {"bicycle", "chair", "mug"}
    assert (df.role == "both").all()


def test_inshop_query_gallery_roles(tmp_path):
    root = make_inshop(tmp_path / "inshop", train_items=4, test_items=3)
    df = read_dataset("inshop", root)
    assert _summary(df) == {"train": (8, 4), "val": (0, 0), "test": (9, 3)}
    test = df[df.split == "test"]
    assert (test.role == "query").sum() == 3 and (test.role == "gallery").sum() == 6
    assert (df.loc[df.split == "train", "role"] == "both").all()
    assert df.loc[df.class_name == "id_00000007", "label"].unique().tolist() == [7]


def test_inshop_truncated_listing_is_reported(tmp_path):
    root = make_inshop(tmp_path / "inshop")
    p = root / "Eval" / "list_eval_partition.txt"
    p.write_text("\n".join(p.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(DatasetLayoutError, match="declares 20 images but 18 are listed"):
        read_dataset("inshop", root)


def test_missing_layout_files_are_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="images.txt"):
        read_dataset("cub", tmp_path)
    with pytest.raises(DatasetLayoutError, match="Ebay_train.txt"):
        read_dataset("sop", tmp_path)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        read_dataset("cub", tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown dataset"):
        read_dataset("imagenet", tmp_path)


def test_glyphs_is_a_dataset_in_cubs_layout(tmp_path):
    root = make_cub(tmp_path / "glyphs", num_classes=4, per_class=3)
    glyphs, cub = read_dataset("glyphs", root), read_dataset("cub", root)
    assert DATASETS["glyphs"].layout == "cub" and (glyphs.dataset == "glyphs").all()
    assert glyphs.drop(columns="dataset").equals(cub.drop(columns="dataset"))


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


def test_cub_and_cars_expose_their_boxes_only_when_asked(tmp_path):
    cub = make_cub(tmp_path / "cub", num_classes=2, per_class=2, appledouble=False)
    (cub / "bounding_boxes.txt").write_text("".join(f"{i} 1.0 2.0 10.0 8.5\n" for i in range(1, 5)))
    assert "x_1" not in read_dataset("cub", cub)  # auto: the seed papers train on whole images
    boxed = read_dataset("cub", cub, {"bbox": "crop"})
    assert boxed[["x_1", "y_1", "x_2", "y_2"]].drop_duplicates().values.tolist() == [[1.0, 2.0, 11.0, 10.5]]
    (cub / "bounding_boxes.txt").write_text("1 1 2 3 4\n")
    with pytest.raises(DatasetLayoutError, match=r"bounding_boxes.txt: no box for image\(s\) \[2, 3, 4\]"):
        read_dataset("cub", cub, {"bbox": "crop"})
    for devkit in (False, True):
        cars = make_cars(tmp_path / f"cars{devkit}", devkit=devkit)
        assert "x_1" not in read_dataset("cars196", cars)
        boxed = read_dataset("cars196", cars, {"bbox": "crop"})
        # MATLAB's 1-based inclusive (1, 1)–(20, 15) is pixels [0, 20) x [0, 15)
        assert boxed[["x_1", "y_1", "x_2", "y_2"]].drop_duplicates().values.tolist() == [[0.0, 0.0, 20.0, 15.0]]


def test_sop_carries_its_product_categories(tmp_path):
    root = make_sop(tmp_path / "sop", train_classes=3, test_classes=3)
    df = read_dataset("sop", root)
    assert set(df.category) <= {"bicycle", "chair", "mug"} and df.category.nunique() == 3
    assert (df.class_name.str.split("/").str[0] == df.category).all()


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
