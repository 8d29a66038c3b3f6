"""Cars196's two distributions (deepmetric.data.readers.cars196): the devkit .mat files and the flat annotation file."""

from __future__ import annotations

import pytest

from deepmetric.data.readers import DatasetLayoutError, read_dataset
from tests.data.layouts import make_cars, split_summary


@pytest.mark.parametrize("devkit", [False, True])
def test_cars196_both_distributions(tmp_path, devkit):
    root = make_cars(tmp_path / "cars", num_classes=4, per_class=3, devkit=devkit)
    df = read_dataset("cars196", root, {"val_classes": 1})
    assert len(df) == 12
    assert split_summary(df) == {"train": (3, 1), "val": (3, 1), "test": (6, 2)}
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
