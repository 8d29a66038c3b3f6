"""The torch Dataset over manifest rows (deepmetric.data.dataset): the evaluation transform by default, a key
``(i, seed)`` that gives the same pixels wherever it runs, the per-image limits, paths kept inside the root."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.cache import ImageCache
from deepmetric.data.dataset import ManifestImages, seeded_cpu_rng
from deepmetric.data.images import ImageLimits, ImageTooLargeError, PathEscapeError
from deepmetric.data.transforms import InputSpec, eval_image

SPEC = InputSpec(resize=12, crop=8)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(10 + i, 14, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    return ManifestImages(str(tmp_path), [f"{i}.png" for i in range(3)], SPEC)


def _noise(_img: Image.Image) -> torch.Tensor:  # a transform that draws from torch's global generator
    return (torch.rand(3, 2, 2) * 255).to(torch.uint8)


def test_an_item_is_the_evaluation_transform_as_uint8_chw(images, tmp_path):
    assert len(images) == 3
    item = images[1]
    want = eval_image(Image.open(tmp_path / "1.png").convert("RGB"), SPEC)
    assert item.dtype == torch.uint8 and item.shape == (3, 8, 8)
    np.testing.assert_array_equal(item.numpy(), want.transpose(2, 0, 1))


def test_a_seeded_key_gives_the_same_pixels_and_leaves_the_global_generator_as_it_was(images):
    noisy = images.with_transform(_noise)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a, b, c = noisy[(0, 7)], noisy[(0, 7)], noisy[(0, 8)]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)
    with seeded_cpu_rng(7):
        assert torch.equal(_noise(images.image(0)), a)


def test_with_transform_is_a_copy_over_the_same_images(images):
    noisy = images.with_transform(_noise)
    assert noisy.paths == images.paths and noisy.transform is _noise and images.transform is None
    assert images[0].shape == (3, 8, 8) and noisy[0].shape == (3, 2, 2)


def test_the_limits_apply_to_every_decode_and_paths_stay_under_the_root(images, tmp_path):
    small = ManifestImages(str(tmp_path), images.paths, SPEC, limits=ImageLimits(max_pixels=100))
    with pytest.raises(ImageTooLargeError, match="0.png"):
        small[0]
    with pytest.raises(PathEscapeError, match="escapes the dataset root"):
        ManifestImages(str(tmp_path), ["../0.png"], SPEC)[0]


def test_images_come_from_a_cache_view_of_the_same_length(images, tmp_path):
    paths = images.paths
    sha = [hashlib.sha256((tmp_path / p).read_bytes()).hexdigest() for p in paths]
    view = ImageCache.at(tmp_path / "cache", short_side=64, fmt="raw").ensure(str(tmp_path), paths, sha)
    cached = ManifestImages(str(tmp_path), paths, SPEC, cached=view)
    want = images[2]
    (tmp_path / "2.png").unlink()  # read from the cache, not from the file
    assert torch.equal(cached[2], want)
    with pytest.raises(ValueError, match="the image cache view has 3 images for 2 paths"):
        ManifestImages(str(tmp_path), paths[:2], SPEC, cached=view)
