from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deepmetric.data.images import ImageLimits
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
        eval_image(thin, InputSpec(resize=64, crop=64), limits=ImageLimits(max_pixels=1_000_000))
    assert eval_image(thin, InputSpec(resize=64, crop=64)).shape == (64, 64, 3)  # default limit: 40 Mpx


def _augment(**kw):
    from deepmetric.training.config import parse_train

    return parse_train({"augment": kw})[0].augment


def test_default_augmentation_is_the_glyph_transform():
    from deepmetric.data.transforms import augmentation

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    spec = InputSpec(resize=32, crop=32)
    torch.manual_seed(3)
    a = augmentation(spec, _augment(scale_min=0.6))(img)
    torch.manual_seed(3)
    b = train_transform(spec, scale=(0.6, 1.0), hflip=False)(img)
    assert torch.equal(a, b)


def test_random_crop_is_a_window_of_the_resized_image():
    from deepmetric.data.transforms import augmentation, resize_shorter

    arr = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    spec = InputSpec(resize=40, crop=32)
    resized = np.asarray(resize_shorter(Image.fromarray(arr), 40))  # 40 × 53
    t = augmentation(spec, _augment(crop="random"))
    torch.manual_seed(0)
    offsets = set()
    for _ in range(20):
        out = t(Image.fromarray(arr)).permute(1, 2, 0).numpy()
        hits = [(y, x) for y in range(resized.shape[0] - 31) for x in range(resized.shape[1] - 31)
                if np.array_equal(resized[y : y + 32, x : x + 32], out)]
        assert len(hits) >= 1
        offsets.add(hits[0])
    assert len(offsets) > 5  # the window moves
    square = augmentation(spec, _augment(crop="random", square_resize=True, resize=36))
    assert square(Image.fromarray(arr)).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="train.augment.resize"):
        augmentation(InputSpec(resize=64, crop=64), _augment(crop="random", resize=48))


def test_random_erasing_fills_one_rectangle_with_the_normalised_value():
    from deepmetric.data.transforms import augmentation

    spec = InputSpec(resize=64, crop=64)
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    on = augmentation(spec, _augment(scale_min=1.0, erasing={"p": 1.0, "value": [0.0, 0.0, 0.0]}))
    fill = np.round(np.array(spec.mean) * 255).astype(np.uint8)  # normalised 0 = the mean pixel
    torch.manual_seed(0)
    areas = []
    for _ in range(30):
        out = on(img).permute(1, 2, 0).numpy()
        erased = (out == fill).all(-1)
        ys, xs = np.nonzero(erased)
        assert erased.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # one filled rectangle
        assert not out[~erased].any()
        areas.append(erased.mean())
    assert 0.015 < min(areas) and max(areas) < 0.42  # area 0.02–0.4 (rounding of the sides)
    off = augmentation(spec, _augment(scale_min=1.0, erasing={"p": 0.0}))
    assert not off(img).any()


def test_crop_to_box_takes_the_pixels_the_box_covers():
    from deepmetric.data.images import ImageDecodeError
    from deepmetric.data.transforms import box_pixels, crop_to_box

    img = Image.fromarray(np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3))
    assert crop_to_box(img, None) is img
    assert box_pixels((2.4, 3.6, 10.2, 12.0), img.size) == (2, 3, 11, 12)  # outward to whole pixels
    assert box_pixels((-1.0, 0.0, 40.0, 25.0), img.size) == (0, 0, 30, 20)  # clipped to the image
    out = crop_to_box(img, (2.4, 3.6, 10.2, 12.0))
    assert np.array_equal(np.asarray(out), np.asarray(img)[3:12, 2:11])
    with pytest.raises(ImageDecodeError, match="x.jpg: bounding box .* has no pixel inside the 30x20 image"):
        crop_to_box(img, (31.0, 0.0, 40.0, 5.0), "x.jpg")


def test_load_eval_image_crops_before_the_evaluation_transform(tmp_path):
    from deepmetric.data.transforms import load_eval_image

    arr = np.zeros((40, 60, 3), dtype=np.uint8)
    arr[10:30, 40:60] = 255  # the box holds a white square
    Image.fromarray(arr).save(tmp_path / "a.png")
    spec = InputSpec(resize=16, crop=16)
    assert load_eval_image(tmp_path / "a.png", spec, box=(40, 10, 60, 30)).min() == 255
    assert load_eval_image(tmp_path / "a.png", spec).min() == 0
