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
