from __future__ import annotations

import numpy as np

from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import InputSpec
from deepmetric.data.batches import iter_batches, row_batches
from tests.data.layouts import make_boxed


def test_row_batches_cut_each_image_to_its_box(tmp_path):
    boxed, plain = make_boxed(tmp_path)
    spec = InputSpec(resize=24, crop=24)
    got = np.concatenate(list(row_batches(tmp_path, boxed, spec, ImageLimits(), 5)))
    want = np.concatenate(list(row_batches(tmp_path / "cropped", plain, spec, ImageLimits(), 5)))
    assert np.array_equal(got, want)
    whole = np.concatenate(list(iter_batches(tmp_path, list(plain.path), spec, ImageLimits(), 5)))
    assert not np.array_equal(got, whole)
