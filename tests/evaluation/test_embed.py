"""Evaluation embeddings in worker processes equal the serial path, in order."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from deepmetric.data.dataset import ManifestImages
from deepmetric.evaluation.embed import embed_dataset, method_embedder, pixel_embedder
from deepmetric.training.config import InputConfig
from deepmetric.training.model_io import load_model
from tests.deploy_fixtures import make_dataset, make_model_payload


def test_sharded_embedding_equals_serial(tmp_path):
    manifest = make_dataset(tmp_path, num_classes=6, per_class=5)  # 30 images
    spec = InputConfig(resize=32, crop=32)
    ds = ManifestImages(str(tmp_path), manifest["path"], spec)
    method, _ = load_model(make_model_payload())
    fn = method_embedder(method, spec.mean, spec.std)
    torch.set_num_threads(1)
    serial = embed_dataset(fn, ds, batch_size=4)
    sharded = embed_dataset(fn, ds, batch_size=4, processes=2)
    assert serial.shape == sharded.shape == (30, 16)
    np.testing.assert_allclose(sharded, serial, rtol=0, atol=1e-6)



def test_baseline_embedders_travel_to_worker_processes():
    """The sharded path pickles the embedding function: the raw-pixel baseline's must survive the trip."""
    fn = pickle.loads(pickle.dumps(pixel_embedder(8)))
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(fn(x), pixel_embedder(8)(x))
