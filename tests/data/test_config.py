"""DataParams (the ``data:`` block): the per-image limits as the one object the stages pass on."""

from __future__ import annotations

import pytest

from deepmetric.data.config import DataParams, ParamsError, parse_params
from deepmetric.data.images import ImageLimits


def test_limits_carry_both_parameters_and_default_to_image_limits_defaults():
    cfg = parse_params(DataParams, {"max_pixels": 5_000, "max_aspect_ratio": 3.5}, "data")
    assert cfg.limits == ImageLimits(max_pixels=5_000, max_aspect_ratio=3.5)
    assert parse_params(DataParams, {}, "data").limits == ImageLimits()
    assert "limits" not in parse_params(DataParams, {}, "data").model_dump()  # not a parameter of its own


def test_bad_limits_are_named_as_parameters():
    with pytest.raises(ParamsError, match=r"data.max_aspect_ratio = 0.5"):
        parse_params(DataParams, {"max_aspect_ratio": 0.5}, "data")
    with pytest.raises(ParamsError, match=r"data.max_pixels = 0"):
        parse_params(DataParams, {"max_pixels": 0}, "data")


def test_a_catalogue_is_a_generic_layout_with_a_name_of_your_choosing():
    cfg = parse_params(DataParams, {"layout": "folder", "dataset": "products", "root": "/data/p"}, "data")
    assert (cfg.dataset, cfg.layout_name, cfg.crop_boxes) == ("products", "folder", True)
    # the built-in set's name, left in the parameters file, names no catalogue
    assert parse_params(DataParams, {"layout": "folder"}, "data").dataset == "catalogue"
    # a benchmark keeps its name (and its published counts and Ks) in a generic layout
    cub = parse_params(DataParams, {"layout": "table", "table": "cub.csv", "dataset": "cub"}, "data")
    assert (cub.dataset, cub.crop_boxes) == ("cub", True)
    assert parse_params(DataParams, {"dataset": "cub"}, "data").crop_boxes is False  # benchmarks: whole images
    assert parse_params(DataParams, {"dataset": "cub", "bbox": "crop"}, "data").crop_boxes is True
    assert parse_params(DataParams, {"layout": "folder", "bbox": "full"}, "data").crop_boxes is False


@pytest.mark.parametrize("params,words", [
    ({"dataset": "products"}, "unknown dataset 'products'"),
    ({"dataset": "products"}, "for images of your own set data.layout to folder or table"),
    ({"layout": "foldr"}, "data.layout = 'foldr': Value error, unknown layout 'foldr'; did you mean 'folder'?"),
    ({"layout": "table"}, "data: data.layout table needs data.table"),
    ({"table": "items.csv"}, "data: data.table is read by the table layout only (data.layout is cub)"),
    ({"layout": "folder", "dataset": "my shop"}, "a catalogue's name is letters, digits"),
    ({"split": {"test_classes": 2.5}}, "data.split.test_classes = 2.5"),
    ({"split": {"test_classes": 0}}, "data.split.test_classes = 0"),
    ({"split": {"test": 0.3}}, "data.split.test: unknown parameter"),
    ({"bbox": "yes"}, "data.bbox = 'yes'"),
])
def test_bad_layout_parameters_are_named(params, words):
    with pytest.raises(ParamsError) as e:
        parse_params(DataParams, params, "data")
    assert words in str(e.value)
