"""The gallery embedded by several worker processes equals the serial path, row for row, in manifest order."""

from __future__ import annotations

import numpy as np

from deepmetric.data.images import ImageLimits
from deepmetric.export.images import test_rows as gallery_rows_of
from deepmetric.index.config import IndexParams
from deepmetric.index.embedder import OnnxEmbedder
from deepmetric.index.gallery import GALLERY_ROLES, embed_gallery
from tests.deploy_fixtures import make_dataset, onnx_model


def test_processes_give_the_serial_embeddings_in_order(tmp_path):
    manifest = make_dataset(tmp_path, num_classes=8, per_class=6)
    rows = gallery_rows_of(manifest, GALLERY_ROLES)  # 36 rows: 5 batches of 8, over 2 processes × 4 shards
    onnx = onnx_model()
    embedder = OnnxEmbedder(onnx, threads=1)
    serial = embed_gallery(onnx, embedder, rows, tmp_path, IndexParams(batch_size=8, threads=1), ImageLimits(max_pixels=10**7))
    sharded = embed_gallery(onnx, embedder, rows, tmp_path, IndexParams(batch_size=8, threads=1, processes=2),
                            ImageLimits(max_pixels=10**7))
    assert serial.shape == sharded.shape == (len(rows), embedder.dim)
    # same batches through the same graph: equal to float32 rounding (1e-6 on unit vectors)
    np.testing.assert_allclose(sharded, serial, rtol=0, atol=1e-6)
    # and in manifest order: each row's nearest stored vector is itself
    assert (np.argmax(sharded @ serial.T, axis=1) == np.arange(len(rows))).all()


def test_the_gallery_is_embedded_cut_to_its_boxes_serially_and_in_shards(tmp_path):
    from tests.data.layouts import make_boxed

    boxed, plain = make_boxed(tmp_path, num_classes=4, per_class=5)
    onnx = onnx_model()
    embedder = OnnxEmbedder(onnx, threads=1)
    limits = ImageLimits(max_pixels=10**7)
    want = embed_gallery(onnx, embedder, plain, tmp_path / "cropped", IndexParams(batch_size=4, threads=1), limits)
    for processes in (1, 2):
        got = embed_gallery(onnx, embedder, boxed, tmp_path, IndexParams(batch_size=4, threads=1, processes=processes),
                            limits)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
