"""CUB-200-2011's distributed layout (deepmetric.data.readers.cub): the zero-shot class split, macOS junk skipped, the
boxes exposed only when asked (Cars196's too)."""

from __future__ import annotations

import pytest

from deepmetric.data.readers import READER_COLUMNS, DatasetLayoutError, read_dataset
from tests.data.layouts import make_cars, make_cub, split_summary


def test_cub_splits_by_class_ignores_classification_split_and_appledouble(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", num_classes=4, per_class=3)
    df = read_dataset("cub", root)
    assert tuple(df.columns) == READER_COLUMNS
    assert len(df) == 12 and not df.path.str.contains("/._").any()
    assert split_summary(df) == {"train": (6, 2), "val": (0, 0), "test": (6, 2)}
    assert set(df.loc[df.split == "train", "label"]) == {1, 2}  # classes 1..n/2 (CUB: 1-100)
    assert set(df.loc[df.split == "test", "label"]) == {3, 4}
    assert (df.role == "both").all() and (df.dataset == "cub").all()
    row = df[df.path == "images/003.Bird_3/Bird_3_0001.jpg"].iloc[0]
    assert (row.label, row.class_name, row.split) == (3, "Bird_3", "test")
    assert all((root / p).is_file() for p in df.path)


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
