from __future__ import annotations

import numpy as np
import pandas as pd

from deepmetric.data.images import ImageLimits
from deepmetric.validation import ValidateParams
from deepmetric.validation.computed import computed_columns

NO_FILES = ValidateParams(check_files=False)


def _manifest(**cols):
    base = {"path": [f"{i}.jpg" for i in range(6)], "label": [0, 0, 1, 1, 2, 2],
            "class_name": ["tote", "tote", "hat", "hat", "belt", "belt"], "split": ["train"] * 4 + ["test"] * 2,
            "role": ["both"] * 6, "width": [30] * 6, "height": [20] * 6, "sha256": list("abcdef")}
    base.update(cols)
    return pd.DataFrame(base)


def test_same_bytes_under_two_classes_of_a_split_name_the_other_class():
    out = computed_columns(_manifest(sha256=list("abadef")), None, NO_FILES, ImageLimits(), False)
    assert out.sha256_other_classes.fillna("-").tolist() == ["hat (1)", "-", "tote (0)", "-", "-", "-"]
    assert out.sha256_in_class_count.tolist() == [1] * 6
    # across splits it is the leakage check's business, not counted twice here
    out = computed_columns(_manifest(sha256=list("abcdea")), None, NO_FILES, ImageLimits(), False)
    assert out.sha256_other_classes.isna().all() and out.sha256_split_count.tolist()[0] == 2


def test_duplicates_within_a_class_are_counted():
    out = computed_columns(_manifest(sha256=list("aacdef")), None, NO_FILES, ImageLimits(), False)
    assert out.sha256_in_class_count.tolist() == [2, 2, 1, 1, 1, 1] and out.sha256_other_classes.isna().all()


def test_box_errors_name_the_box_and_the_image_size():
    boxes = {"x_1": [0, np.nan, 5, 0, 10, 0], "y_1": [0, np.nan, 5, 0, 0, -1],
             "x_2": [30, np.nan, 5, 31, 20, 10], "y_2": [20, np.nan, 9, 10, np.nan, 10]}
    out = computed_columns(_manifest(**boxes), None, NO_FILES, ImageLimits(), False)
    assert pd.isna(out.bbox_error[0]) and pd.isna(out.bbox_error[1])  # inside the image, and no box
    assert "has x_2 <= x_1" in out.bbox_error[2]
    assert out.bbox_error[3] == "box (0, 0, 31, 10) outside the 30x20 image"
    assert out.bbox_error[4].startswith("partial box")
    assert "outside" in out.bbox_error[5]


def test_query_classes_count_their_gallery_images():
    m = _manifest(split=["train", "train", "test", "test", "test", "test"],
                  role=["both", "both", "query", "gallery", "query", "query"])
    out = computed_columns(m, None, NO_FILES, ImageLimits(), False)
    np.testing.assert_array_equal(out.query_gallery_images, [np.nan, np.nan, 1, np.nan, 0, 0])
    assert "query_gallery_images" not in computed_columns(_manifest(), None, NO_FILES, ImageLimits(), False)
