from __future__ import annotations

import pandas as pd

from deepmetric.validation.profile import class_size_note, format_note, image_size_note, profile


def test_profile_counts_classes_sizes_and_formats():
    df = pd.DataFrame({"label": [0] * 1 + [1] * 2 + [2] * 4 + [3] * 150, "width": 100, "height": 80})
    df["file_format"] = ["PNG"] * 7 + [None] * 150  # only the files the check decoded have a format
    p = profile(df)
    assert p["images_per_class"]["histogram"] == {"1": 1, "2": 1, "3-5": 1, "6-10": 0, "11-100": 0, ">100": 1}
    assert (p["images_per_class"]["min"], p["images_per_class"]["max"]) == (1, 150)
    assert p["formats"] == {"PNG": 7} and p["formats_of"] == 7 and p["width"]["median"] == 100
    assert "3-5: 1" in class_size_note(p) and "max 150" in class_size_note(p)
    assert "Height (pixels): min 80" in image_size_note(p)
    assert format_note(p) == "Formats of the 7 files decoded by the file check: PNG: 7."
