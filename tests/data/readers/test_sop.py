"""Stanford Online Products (deepmetric.data.readers.sop): its train/test listing files and product categories."""

from __future__ import annotations

from deepmetric.data.readers import read_dataset
from tests.data.layouts import make_sop, split_summary


def test_sop_train_and_test_files(tmp_path):
    root = make_sop(tmp_path / "Stanford_Online_Products", train_classes=4, test_classes=3, per_class=2)
    df = read_dataset("sop", root, {"val_classes": 0.25})
    assert split_summary(df) == {"train": (6, 3), "val": (2, 1), "test": (6, 3)}
    assert set(df.loc[df.split == "test", "label"]) == {5, 6, 7}
    assert df.class_name.iloc[0].split("/")[0] in {"bicycle", "chair", "mug"}
    assert (df.role == "both").all()


def test_sop_carries_its_product_categories(tmp_path):
    root = make_sop(tmp_path / "sop", train_classes=3, test_classes=3)
    df = read_dataset("sop", root)
    assert set(df.category) <= {"bicycle", "chair", "mug"} and df.category.nunique() == 3
    assert (df.class_name.str.split("/").str[0] == df.category).all()
