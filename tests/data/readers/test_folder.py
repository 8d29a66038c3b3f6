from __future__ import annotations

import shutil

import pytest

from deepmetric.data.readers import READER_COLUMNS, DatasetLayoutError, read_dataset
from tests.data.layouts import make_folder, write_image

FOLDER = {"layout": "folder", "val_classes": 0}


def _split_of(df):
    return df.groupby("class_name")["split"].first().to_dict()


def test_one_folder_per_class_nested_classes_and_skipped_files_counted(tmp_path):
    make_folder(tmp_path, per_class=3, junk=True)
    df = read_dataset("products", tmp_path, FOLDER)
    assert tuple(df.columns) == READER_COLUMNS and (df.dataset == "products").all()
    assert len(df) == 18 and sorted(df.class_name.unique()) == sorted(
        ["bags/tote", "bags/clutch", "hats", "shoes", "scarves", "belts"])
    assert df.loc[df.class_name == "bags/tote", "path"].tolist() == [f"bags/tote/{k:03d}.jpg" for k in range(3)]
    assert (df.role == "both").all() and set(df.split) == {"train", "test"}
    # labels number the class names in sorted order, one per class
    assert df.groupby("class_name").label.first().to_dict() == {
        c: i for i, c in enumerate(sorted(df.class_name.unique()))}
    assert df.attrs["skipped"] == {"hidden": 12, "not an image (extension)": 6}


def test_split_by_class_is_seeded_and_stable_when_classes_are_added(tmp_path):
    classes = [f"sku-{i:03d}" for i in range(60)]
    make_folder(tmp_path / "a", classes=classes, per_class=2)
    before = _split_of(read_dataset("p", tmp_path / "a", {**FOLDER, "val_classes": 0.2}))
    assert set(before.values()) == {"train", "val", "test"}
    assert 15 <= sum(s == "test" for s in before.values()) <= 45  # a fraction of 0.5, by hash
    # 20 new classes, and the catalogue's folder renamed: no existing class changes split
    make_folder(tmp_path / "b", classes=classes + [f"new-{i}" for i in range(20)], per_class=2)
    after = _split_of(read_dataset("p", tmp_path / "b", {**FOLDER, "val_classes": 0.2}))
    assert {c: after[c] for c in classes} == before
    other_seed = _split_of(read_dataset("p", tmp_path / "a", {**FOLDER, "split": {"seed": 1}}))
    assert other_seed != {c: s.replace("val", "train") for c, s in before.items()}
    # a count is exact
    counted = _split_of(read_dataset("p", tmp_path / "a", {**FOLDER, "split": {"test_classes": 7}}))
    assert sum(s == "test" for s in counted.values()) == 7


def test_a_tiny_catalogue_still_gets_a_test_and_a_train_class(tmp_path):
    make_folder(tmp_path, classes=["a", "b"], per_class=2)
    for seed in range(8):
        df = read_dataset("p", tmp_path, {**FOLDER, "split": {"seed": seed}})
        assert set(df.split) == {"train", "test"}


def test_split_folders_with_query_and_gallery(tmp_path):
    make_folder(tmp_path, classes=["c1", "c2", "c3"], under="train")
    make_folder(tmp_path, classes=["c4", "c5"], under="test/query", per_class=1, seed=1)
    make_folder(tmp_path, classes=["c4", "c5"], under="test/gallery", per_class=2, seed=2)
    df = read_dataset("p", tmp_path, {**FOLDER, "val_classes": 1})
    assert _split_of(df)["c4"] == "test" and sorted(df.loc[df.split == "test", "role"].unique()) == ["gallery", "query"]
    assert df.loc[df.path == "test/query/c4/000.jpg", "role"].item() == "query"
    assert df.loc[(df.class_name == "c4")].label.nunique() == 1  # a class is one label across query and gallery
    assert (df.split == "val").sum() == 3 and (df.loc[df.split != "test", "role"] == "both").all()


def test_explicit_val_folder_is_kept(tmp_path):
    make_folder(tmp_path, classes=["a", "b"], under="train")
    make_folder(tmp_path, classes=["c"], under="val", seed=1)
    make_folder(tmp_path, classes=["d", "e"], under="test", seed=2)
    df = read_dataset("p", tmp_path, {**FOLDER, "val_classes": 0.5})
    assert _split_of(df) == {"a": "train", "b": "train", "c": "val", "d": "test", "e": "test"}


@pytest.mark.parametrize("case,words", [
    ("one_class", "found 1 class folder (only/); metric learning needs at least 2 classes"),
    ("empty_class", "class folder(s) with no image: empty/"),
    ("loose_image", "1 image(s) directly in the root (stray.jpg)"),
    ("mixed_splits", "split folders (test/, train/) mixed with other folders (cats/)"),
    ("class_in_two_splits", "class(es) in more than one split folder: a (test/ and train/)"),
    ("query_without_gallery", "has query/ but lacks gallery/"),
    ("query_outside_test", "query/gallery folders belong under test/ only"),
])
def test_bad_folder_layouts_are_refused_naming_the_folder(tmp_path, case, words):
    if case == "one_class":
        make_folder(tmp_path, classes=["only"])
    elif case == "empty_class":
        make_folder(tmp_path, classes=["a", "b"])
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "readme.txt").write_text("no images here")
    elif case == "loose_image":
        make_folder(tmp_path, classes=["a", "b"])
        write_image(tmp_path / "stray.jpg", seed=1)
    elif case == "mixed_splits":
        make_folder(tmp_path, classes=["a", "b"], under="train")
        make_folder(tmp_path, classes=["c"], under="test", seed=1)
        make_folder(tmp_path, classes=["cats"], seed=2)
    elif case == "class_in_two_splits":
        make_folder(tmp_path, classes=["a", "b"], under="train")
        make_folder(tmp_path, classes=["a", "c"], under="test", seed=1)
    elif case == "query_without_gallery":
        make_folder(tmp_path, classes=["a", "b"], under="train")
        make_folder(tmp_path, classes=["c"], under="test/query", seed=1)
    elif case == "query_outside_test":
        make_folder(tmp_path, classes=["a"], under="train/query")
        make_folder(tmp_path, classes=["c"], under="test", seed=1)
    with pytest.raises(DatasetLayoutError) as e:
        read_dataset("p", tmp_path, FOLDER)
    assert words in str(e.value) and str(tmp_path) in str(e.value)


def test_a_folder_with_only_hidden_files_is_an_empty_class(tmp_path):
    make_folder(tmp_path, classes=["a", "b"], junk=True)
    shutil.rmtree(tmp_path / "b")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetLayoutError, match="class folder.*with no image: b/"):
        read_dataset("p", tmp_path, FOLDER)
