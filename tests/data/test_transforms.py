from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deepmetric.data.transforms import InputSpec, eval_image, train_transform


def test_eval_image_resizes_shorter_side_and_centre_crops():
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, 95:105] = 255  # a vertical bar in the middle
    out = eval_image(Image.fromarray(arr), InputSpec(resize=72, crop=64))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[:, 32].min() > 200 and out[:, 0].max() == 0
    # Deterministic, and an already-right-sized image passes through unchanged.
    same = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    assert np.array_equal(eval_image(Image.fromarray(same), InputSpec(resize=64, crop=64)), same)


def test_input_spec_validation():
    with pytest.raises(ValidationError, match="crop"):
        InputSpec(resize=32, crop=64)
    with pytest.raises(ValidationError, match="extra"):
        InputSpec(resize=64, crop=64, colour="rgb")
    assert InputSpec().model_dump()["mean"] == (0.485, 0.456, 0.406)


def test_train_transform_shape_and_no_flip_for_glyphs():
    torch.manual_seed(0)
    arr = np.full((64, 64, 3), 255, np.uint8)
    arr[:, :8] = 0  # dark stripe on the left
    img = Image.fromarray(arr)
    t = train_transform(InputSpec(resize=64, crop=48), scale=(1.0, 1.0), hflip=False)
    for _ in range(10):
        x = t(img)
        assert x.shape == (3, 48, 48) and x.dtype == torch.uint8
        assert x[:, :, 0].float().mean() < 50  # the stripe never moves to the right
    flips = train_transform(InputSpec(resize=64, crop=48), scale=(1.0, 1.0), hflip=True)
    assert any(flips(img)[:, :, -1].float().mean() < 50 for _ in range(20))
    with pytest.raises(ValueError, match="scale"):
        train_transform(InputSpec(), scale=(0.0, 1.0))


def test_resize_intermediate_is_bounded_before_resizing():
    from deepmetric.data.images import ImageTooLargeError

    thin = Image.new("RGB", (1, 5000))  # shorter side 1 → 64: 64×320,000 = 20.5 Mpx
    with pytest.raises(ImageTooLargeError, match=r"64x320000 = 20,480,000 pixels, above the limit of 1,000,000 "
                                                 r"\(parameter max_pixels\)"):
        eval_image(thin, InputSpec(resize=64, crop=64), max_pixels=1_000_000)
    assert eval_image(thin, InputSpec(resize=64, crop=64)).shape == (64, 64, 3)  # default limit: 40 Mpx
