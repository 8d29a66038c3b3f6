"""The built-in glyph set as a dataset (deepmetric.data.readers.glyphs): CUB's layout under another name."""

from __future__ import annotations

from deepmetric.data.readers import DATASETS, read_dataset
from tests.data.layouts import make_cub


def test_glyphs_is_a_dataset_in_cubs_layout(tmp_path):
    root = make_cub(tmp_path / "glyphs", num_classes=4, per_class=3)
    glyphs, cub = read_dataset("glyphs", root), read_dataset("cub", root)
    assert DATASETS["glyphs"].layout == "cub" and (glyphs.dataset == "glyphs").all()
    assert glyphs.drop(columns="dataset").equals(cub.drop(columns="dataset"))
