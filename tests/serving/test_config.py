"""Server settings: the image limits as one ImageLimits, the environment round trip of `serve --workers N`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deepmetric.data.images import ImageLimits
from deepmetric.serving.config import ServerSettings


def test_limits_are_one_image_limits():
    assert ServerSettings().limits == ImageLimits()
    s = ServerSettings(max_pixels=5_000, max_aspect_ratio=2.5)
    assert s.limits == ImageLimits(max_pixels=5_000, max_aspect_ratio=2.5)
    assert "limits" not in s.model_dump()  # /v1/info and the workers' environment keep the flat fields


def test_environment_round_trip():
    s = ServerSettings(max_images=3, batching=False, batch_window_ms=0.5, max_aspect_ratio=4.0)
    env = s.to_env()
    assert env["DEEPMETRIC_MAX_IMAGES"] == "3" and env["DEEPMETRIC_BATCHING"] == "False"
    assert ServerSettings.from_env(env) == s
    assert ServerSettings.from_env({}) == ServerSettings()
    with pytest.raises(ValidationError, match="max_images"):
        ServerSettings.from_env({"DEEPMETRIC_MAX_IMAGES": "0"})
