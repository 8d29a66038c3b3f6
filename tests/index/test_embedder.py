"""deepmetric.index.embedder: an onnxruntime session over the exported model, its input contract read from the
model's metadata, and refusals that say what is wrong with the model or the images."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.index.embedder import OnnxEmbedder
from tests.deploy_fixtures import EMBED_DIM, onnx_model


@pytest.fixture(scope="module")
def embedder():
    return OnnxEmbedder(onnx_model(), threads=1)


def test_the_spec_and_width_come_from_the_model(embedder):
    assert embedder.dim == EMBED_DIM
    assert embedder.spec.crop > 0 and embedder.spec.resize >= embedder.spec.crop
    assert embedder.input_meta["crop"] == embedder.spec.crop


def test_batches_give_the_same_unit_vectors_as_one_call(embedder):
    c = embedder.spec.crop
    images = np.random.default_rng(0).integers(0, 256, (5, c, c, 3), dtype=np.uint8)
    whole = embedder.embed(images)
    assert whole.shape == (5, EMBED_DIM) and whole.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(images, batch_size=2), whole, rtol=0, atol=1e-6)
    assert embedder.embed(images[:0]).shape == (0, EMBED_DIM)


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8),
                                 np.zeros((2, 8, 8, 4), np.uint8)])
def test_images_not_uint8_nhwc_rgb_are_refused(embedder, bad):
    with pytest.raises(ValueError, match=r"expected uint8 \[N, H, W, 3\]"):
        embedder.embed(bad)


def test_bytes_that_are_not_a_model_are_refused():
    with pytest.raises(ValueError, match="onnxruntime cannot load the model"):
        OnnxEmbedder(b"not an onnx model")
