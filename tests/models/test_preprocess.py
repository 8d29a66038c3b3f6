"""The model side of preprocessing (deepmetric.models.preprocess): uint8 NCHW in, normalised float out, one
definition for the training loop (`to_model_input`) and the exported graph (`Normalize`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalize, to_model_input


def _images(n=2, size=8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_a_pixel_is_normalised_per_channel_on_the_0_255_scale():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    got = to_model_input(x, IMAGENET_MEAN, IMAGENET_STD).flatten()
    want = [(v / 255.0 - m) / s for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(got, torch.tensor(want))
    assert got.dtype == torch.float32


def test_the_module_and_the_function_agree_without_resizing():
    x = _images()
    module = Normalize(IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(module(x), to_model_input(x, IMAGENET_MEAN, IMAGENET_STD))
    assert Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size=8)(x).shape == x.shape  # the size already fits


def test_the_module_resizes_bilinearly_to_its_size_before_normalising():
    x = _images(size=12)
    got = Normalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), size=6)(x)
    want = F.interpolate(x.float(), size=(6, 6), mode="bilinear", align_corners=False) / 255.0
    assert got.shape == (2, 3, 6, 6)
    torch.testing.assert_close(got, want)


def test_mean_and_std_are_buffers_that_travel_with_the_module():
    names = {n for n, _ in Normalize(IMAGENET_MEAN, IMAGENET_STD).named_buffers()}
    assert names == {"mean", "std"}
    assert not list(Normalize(IMAGENET_MEAN, IMAGENET_STD).parameters())
