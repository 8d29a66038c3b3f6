"""Manifest images for the export checks (deepmetric.export.images): the test rows, an evenly spaced subset, and
batches decoded through the one evaluation transform under the image limits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from deepmetric.data.images import ImageLimits, ImageTooLargeError
from deepmetric.data.transforms import InputSpec, eval_image
from deepmetric.export.images import iter_batches, load_batch, spaced_subset
from deepmetric.export.images import test_rows as select_test_rows  # not a test: keep pytest from collecting it

SPEC = InputSpec(resize=10, crop=8)


def _manifest(n=10) -> pd.DataFrame:
    return pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": [i // 2 for i in range(n)],
                         "split": ["train", "test"] * (n // 2), "role": ["query", "gallery", "both", "gallery"] *
                         (n // 4) + ["both"] * (n % 4)})


def test_test_rows_keep_the_manifest_order_and_filter_by_role():
    m = _manifest()
    rows = select_test_rows(m)
    assert list(rows["path"]) == ["1.png", "3.png", "5.png", "7.png", "9.png"] and list(rows.index) == [0, 1, 2, 3, 4]
    assert list(select_test_rows(m, ("gallery",))["path"]) == ["1.png", "3.png", "5.png", "7.png"]
    assert list(select_test_rows(m.drop(columns="role"), ("gallery",))["path"]) == list(rows["path"])  # no roles: all


def test_a_manifest_without_test_rows_or_columns_is_refused_by_name():
    with pytest.raises(ValueError, match=r"the validated manifest lacks columns \['split'\]"):
        select_test_rows(_manifest().drop(columns="split"))
    with pytest.raises(ValueError, match=r"has no test-split rows with role in \['query'\]"):
        select_test_rows(_manifest(), ("query",))
    with pytest.raises(ValueError, match="has no test-split rows$"):
        select_test_rows(_manifest().assign(split="train"))


def test_spaced_subset_is_deterministic_and_spans_the_table():
    rows = pd.DataFrame({"i": range(100)})
    sub = spaced_subset(rows, 5)
    assert list(sub["i"]) == [0, 25, 50, 74, 99] and list(sub.index) == [0, 1, 2, 3, 4]
    assert spaced_subset(rows, 100) is rows and len(spaced_subset(rows.head(3), 2)) == 2


def test_batches_are_the_evaluation_transform_as_uint8_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, size=(12 + i, 16, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    batches = list(iter_batches(tmp_path, paths, SPEC, ImageLimits(max_pixels=None), 2))
    assert [b.shape for b in batches] == [(2, 8, 8, 3), (2, 8, 8, 3), (1, 8, 8, 3)]
    assert all(b.dtype == np.uint8 for b in batches)
    np.testing.assert_array_equal(batches[1][1], eval_image(Image.open(tmp_path / "3.png").convert("RGB"), SPEC))
    with pytest.raises(ImageTooLargeError, match="0.png"):
        load_batch(tmp_path, paths, SPEC, ImageLimits(max_pixels=100))
