"""The helpers every reader shares (deepmetric.data.readers.common): the val slice of the training classes, the
class-name hash split of a catalogue, the layout errors."""

from __future__ import annotations

import pytest

from deepmetric.data.readers import read_dataset
from deepmetric.data.readers.common import (DatasetLayoutError, class_hash, hash_split, is_appledouble, require_file,
                                          zero_shot_split)
from tests.data.layouts import make_cub, split_summary


def test_val_slice_fraction_and_count(tmp_path):
    root = make_cub(tmp_path / "cub", num_classes=10, per_class=2, appledouble=False)
    df = read_dataset("cub", root, {"val_classes": 0.4})
    assert split_summary(df) == {"train": (6, 3), "val": (4, 2), "test": (10, 5)}
    assert set(df.loc[df.split == "val", "label"]) == {4, 5}  # the last train classes
    df2 = read_dataset("cub", root, {"val_classes": 1})
    assert set(df2.loc[df2.split == "val", "label"]) == {5}
    with pytest.raises(ValueError, match="leave at least one class"):
        read_dataset("cub", root, {"val_classes": 5})


def test_the_hash_split_keeps_every_class_where_it_was_when_classes_are_added():
    names = [f"class-{i:03d}" for i in range(200)]
    split = dict(zip(names, hash_split(names, test_classes=0.5, val_classes=0.2, seed=7)))
    more = names + [f"new-{i}" for i in range(50)]
    grown = dict(zip(more, hash_split(more, test_classes=0.5, val_classes=0.2, seed=7)))
    assert all(grown[c] == split[c] for c in names)  # a class trained on never becomes a test class
    assert set(split.values()) == {"train", "val", "test"}
    assert 70 < sum(s == "test" for s in split.values()) < 130  # about half, decided by each name's hash
    assert hash_split(names, 0.5, 0.2, seed=8) != list(split.values())  # the seed matters
    assert class_hash("a", 7) == class_hash("a", 7) != class_hash("a", 7, "val")


def test_counts_are_exact_and_a_split_that_takes_every_class_is_refused():
    names = ["a", "b", "c", "d", "e"]
    assert hash_split(names, test_classes=2, val_classes=1, seed=0).count("test") == 2
    assert hash_split(names, test_classes=2, val_classes=1, seed=0).count("val") == 1
    with pytest.raises(ValueError, match=r"data.split.test_classes=5 takes all 5 classes"):
        hash_split(names, test_classes=5, val_classes=0, seed=0)


def test_a_missing_listing_file_names_what_was_expected_and_where(tmp_path):
    (tmp_path / "b.txt").write_text("x")
    assert require_file(tmp_path, "a.txt", "b.txt", what="listing") == tmp_path / "b.txt"
    with pytest.raises(DatasetLayoutError, match=r"listing: expected a.txt or c.txt under .* \(is data.root"):
        require_file(tmp_path, "a.txt", "c.txt", what="listing")
    assert is_appledouble("x/._img.jpg") and is_appledouble("__MACOSX/x/img.jpg") and not is_appledouble("x/img.jpg")


def test_the_zero_shot_split_trains_on_the_first_half_of_the_labels_and_validates_on_its_last_classes():
    import pandas as pd

    rows = pd.DataFrame({"path": [f"{c}/{i}.png" for c in (5, 1, 9, 3, 7) for i in range(2)],
                         "label": [c for c in (5, 1, 9, 3, 7) for _ in range(2)]})
    rows["class_name"] = rows["label"].astype(str)
    df = zero_shot_split(rows, 1, "demo")
    splits = df.groupby("label")["split"].first().to_dict()
    # 5 classes: ceil(5/2) = 3 train by label order (1, 3, 5), the last of them validates; 7 and 9 test
    assert splits == {1: "train", 3: "train", 5: "val", 7: "test", 9: "test"}
    assert (df["role"] == "both").all() and (df["dataset"] == "demo").all()
    assert df["split"].tolist() == sorted(df["split"].tolist(), key=["train", "val", "test"].index)
