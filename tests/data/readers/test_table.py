from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepmetric.data.readers import DatasetLayoutError, read_dataset
from tests.data.layouts import make_folder, write_table

CLASSES = ["tote", "clutch", "hat", "shoe", "scarf", "belt"]


@pytest.fixture
def catalogue(tmp_path):
    paths = make_folder(tmp_path, classes=CLASSES, per_class=3, under="images")
    return tmp_path, paths


def _params(table, **kw):
    return {"layout": "table", "table": str(table), "val_classes": 0, **kw}


def _read(root, rows, name="items.csv", **kw):
    return read_dataset("shop", root, _params(write_table(root / name, rows), **kw))


def test_path_and_label_only_splits_by_class_with_text_labels_naming_classes(catalogue):
    root, paths = catalogue
    rows = [{"path": p, "label": p.split("/")[1]} for p in paths]
    df = _read(root, rows, name="items.csv")
    assert sorted(df.class_name.unique()) == sorted(CLASSES)
    assert df.groupby("class_name").label.first().to_dict() == {c: i for i, c in enumerate(sorted(CLASSES))}
    assert set(df.split) == {"train", "test"} and (df.role == "both").all()
    # the same split as the folder layout would draw for these class names: both hash the class as written
    folder = read_dataset("shop", root / "images", {"layout": "folder", "val_classes": 0})
    assert df.groupby("class_name").split.first().to_dict() == folder.groupby("class_name").split.first().to_dict()


def test_an_open_metric_learning_table_loads_as_is(catalogue):
    """OML's columns: label (int), path, split train|validation, is_query/is_gallery on validation rows only,
    category, and the box as x_1, x_2, y_1, y_2."""
    root, paths = catalogue
    rows = []
    for p in paths:
        c = CLASSES.index(p.split("/")[1])
        held_out = c >= 3
        rows.append({"label": c, "path": str(root / p), "split": "validation" if held_out else "train",
                     "is_query": True if held_out else None, "is_gallery": True if held_out else None,
                     "category": "bags" if c < 2 else "clothes", "x_1": 2.0, "x_2": 20.0, "y_1": 1.5, "y_2": 18.0,
                     "sequence": None})
    df = _read(root, rows, name="df.parquet")
    assert set(df.loc[df.label >= 3, "split"]) == {"test"} and set(df.loc[df.label < 3, "split"]) == {"train"}
    assert (df.role == "both").all() and df.path.str.startswith("images/").all()
    assert df.class_name.tolist() == df.label.astype(str).tolist()
    assert list(df.columns[-5:]) == ["category", "x_1", "y_1", "x_2", "y_2"]
    assert df[["x_1", "y_1", "x_2", "y_2"]].iloc[0].tolist() == [2.0, 1.5, 20.0, 18.0]
    full = read_dataset("shop", root, _params(root / "df.parquet", bbox="full"))
    assert "x_1" not in full and "category" in full


def test_a_deepmetric_manifest_loads_as_a_table(catalogue, tmp_path):
    from deepmetric.data.manifest import build_manifest

    root, _ = catalogue
    m, _ = build_manifest(read_dataset("shop", root / "images", {"layout": "folder", "val_classes": 1}),
                          root / "images", progress=False)
    m.to_parquet(tmp_path / "manifest.parquet")
    again = read_dataset("shop", root / "images", _params(tmp_path / "manifest.parquet"))
    cols = ["path", "label", "class_name", "split", "role"]
    assert again[cols].equals(m[cols])


def test_query_gallery_roles_and_an_explicit_split_keep_val_slice_by_hash(catalogue):
    root, paths = catalogue
    rows = []
    for p in paths:
        c = CLASSES.index(p.split("/")[1])
        test = c >= 4
        k = int(p[-7:-4])
        rows.append({"path": p, "label": c, "split": "test" if test else "train",
                     "is_query": "1" if test and k == 0 else ("0" if test else ""),
                     "is_gallery": "0" if test and k == 0 else ("1" if test else "")})
    df = _read(root, rows, val_classes=1)
    test = df[df.split == "test"]
    assert (test.role == "query").sum() == 2 and (test.role == "gallery").sum() == 4
    assert (df.split == "val").sum() == 3 and df.loc[df.split == "val", "label"].nunique() == 1


def _rows(paths, **over):
    return [{"path": p, "label": CLASSES.index(p.split("/")[1]), **over} for p in paths]


def _break(case, root, paths):
    rows = _rows(paths)
    if case == "missing_column":
        return [{"file": r["path"], "label": r["label"]} for r in rows]
    if case == "unknown_split":
        rows = _rows(paths, split="train")
        rows[4]["split"] = "holdout"
    elif case == "query_without_gallery":
        rows = _rows(paths, split="test", is_query=True)
    elif case == "label_in_two_splits":
        rows = _rows(paths, split="train")
        rows[2]["split"] = "test"
    elif case == "escaping_path":
        rows[3]["path"] = "../outside.jpg"
    elif case == "absolute_outside_root":
        rows[5]["path"] = "/etc/passwd"
    elif case == "flipped_box":
        rows = [{**r, "x_1": 1, "y_1": 1, "x_2": 10, "y_2": 10} for r in rows]
        rows[6]["x_2"] = 0.5
    elif case == "partial_box":
        rows = [{**r, "x_1": 1, "y_1": 1, "x_2": 10, "y_2": 10} for r in rows]
        rows[7]["y_2"] = None
    elif case == "neither_role":
        rows = _rows(paths, split="test", is_query=True, is_gallery=True)
        rows[8].update(is_query=False, is_gallery=False)
    return rows


BAD = {
    "missing_column": "missing column(s) 'path' (found: file, label)",
    "unknown_split": "row 5: unknown 'split' value(s) ['holdout'] (allowed: train, val, test, validation)",
    "query_without_gallery": "column 'is_query' without 'is_gallery'",
    "label_in_two_splits": "label(s) [0] appear in more than one split (label 0: test, train, rows 1, 2, 3)",
    "escaping_path": "column 'path' leaves data.root",
    "absolute_outside_root": "row 6: '/etc/passwd'",
    "flipped_box": "row 7: bounding box with x_2 <= x_1 or y_2 <= y_1",
    "partial_box": "row 8: a bounding box needs all of x_1, y_1, x_2, y_2",
    "neither_role": "row 9: 'is_query' and 'is_gallery' both false",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tables_are_refused_naming_file_row_and_column(catalogue, case):
    root, paths = catalogue
    with pytest.raises(DatasetLayoutError) as e:
        _read(root, _break(case, root, paths), bbox="crop")
    msg = str(e.value)
    assert str(root / "items.csv") in msg and BAD[case] in msg, msg


def test_table_parameter_and_file_are_checked(tmp_path):
    with pytest.raises(DatasetLayoutError, match="needs data.table"):
        read_dataset("shop", tmp_path, {"layout": "table"})
    with pytest.raises(DatasetLayoutError, match=r"items.csv: table not found \(parameter data.table"):
        read_dataset("shop", tmp_path, _params("items.csv"))
    (tmp_path / "items.json").write_text("{}")
    with pytest.raises(DatasetLayoutError, match="unknown table format '.json'"):
        read_dataset("shop", tmp_path, _params("items.json"))


def test_rows_without_a_box_keep_the_whole_image(catalogue):
    root, paths = catalogue
    rows = [{**r, "x_1": np.nan, "y_1": np.nan, "x_2": np.nan, "y_2": np.nan} for r in _rows(paths)]
    rows[0].update(x_1=0, y_1=0, x_2=5, y_2=5)
    df = _read(root, rows)
    assert df[["x_1", "y_1", "x_2", "y_2"]].notna().all(axis=1).sum() == 1
    assert pd.isna(df.loc[df.path == paths[1], "x_1"]).all()


def test_absolute_paths_inside_the_root_and_windows_separators_become_relative_posix_paths(catalogue):
    root, paths = catalogue
    rows = [{"path": p, "label": p.split("/")[1]} for p in paths]
    rows[0]["path"] = str(root / paths[0])  # absolute, inside data.root
    rows[1]["path"] = paths[1].replace("/", "\\")  # written on Windows
    rows[2]["path"] = "images/./" + paths[2].removeprefix("images/")  # not normalised
    df = _read(root, rows)
    assert sorted(df.path) == sorted(paths)


def test_table_rows_are_one_based_after_the_header_and_follow_the_layout_s_paths(catalogue):
    from deepmetric.data.readers.table import table_rows

    root, paths = catalogue
    table = write_table(root / "items.csv", [{"path": str(root / p), "label": 1} for p in paths[:3]]
                        + [{"path": paths[0], "label": 1}])
    # absolute paths are read relative to the root, as the layout lists them; a path listed twice: its first row
    assert table_rows(table, root, [paths[2], paths[0], "nowhere.jpg"]) == {paths[2]: 3, paths[0]: 1}
