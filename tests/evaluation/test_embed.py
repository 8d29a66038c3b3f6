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
    manifest = make_dataset(tmp_path, num_classes=6, per_class=5)  # 30 images: 8 batches of 4 over 2 processes
    ds = ManifestImages(str(tmp_path), manifest["path"], InputConfig(resize=32, crop=32))
    fn = pixel_embedder(8)  # the raw-pixel baseline: cheap to start in a worker (no network to unpickle)
    serial = embed_dataset(fn, ds, batch_size=4)
    sharded = embed_dataset(fn, ds, batch_size=4, processes=2)
    assert serial.shape == sharded.shape == (30, 8 * 8 * 3)
    np.testing.assert_array_equal(sharded, serial)


def test_the_trained_model_embedder_travels_to_worker_processes():
    """The sharded path pickles the embedding function: the trained model's must survive the trip."""
    method, spec = load_model(make_model_payload())
    fn = method_embedder(method, spec.mean, spec.std)
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(pickle.loads(pickle.dumps(fn))(x), fn(x), rtol=0, atol=0)


def test_a_corrupt_image_is_named_from_dataloader_workers_and_from_worker_processes(tmp_path):
    """A broken file met in a DataLoader worker or a sharding process surfaces as an error naming the file, not as
    torch's RuntimeError carrying the worker's traceback or a broken process pool (ImageDecodeError pickles)."""
    import pytest

    from deepmetric.data.images import ImageDecodeError
    from deepmetric.errors import WorkerInputError

    manifest = make_dataset(tmp_path, num_classes=6, per_class=5)
    victim = tmp_path / manifest["path"].iloc[-1]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated PNG
    ds = ManifestImages(str(tmp_path), manifest["path"], InputConfig(resize=32, crop=32))
    with pytest.raises(WorkerInputError, match=victim.name) as info:
        embed_dataset(pixel_embedder(8), ds, batch_size=4, num_workers=2)
    assert info.value.kind == "ImageDecodeError" and "Traceback" not in str(info.value)
    with pytest.raises(ImageDecodeError, match=victim.name):
        embed_dataset(pixel_embedder(8), ds, batch_size=4, processes=2)
