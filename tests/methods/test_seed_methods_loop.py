"""Every seed method through the real training loop (bf16 autocast, two DataLoader workers): trains, resumes from
its model file, embeds consistently."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.methods import METHODS
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.loop import fit
from tests.fixtures import check_trained_model, make_bars


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    """10 classes of coloured bars × 6 images: 6 train classes, 4 test classes."""
    root = tmp_path_factory.mktemp("bars")
    return str(root), make_bars(root, lambda c: "train" if c < 6 else "test", num_classes=10, size=32)


@pytest.mark.parametrize("method", METHODS.names(kind="seed"))
def test_seed_method_trains_in_the_loop(bars, method):
    root, manifest = bars
    blocks = {"divide_conquer": {"num_clusters": 2, "kmeans_niter": 5, "kmeans_nredo": 1},
              "intra_batch": {"mpn_heads": 2}}
    cfg, params = parse_train({
        "method": method, "epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False, "device": "cpu",
        "precision": "bf16", "num_workers": 2,
        "batch": {"classes_per_batch": 3, "samples_per_class": 2}, "eval_batch_size": 32,
        "backbone": {"name": "resnet18"}, "methods": {method: blocks.get(method, {})},
    })
    spec = InputConfig(resize=32, crop=32)
    res = fit(manifest, root, cfg, params, spec)
    assert len(res.log) == 2 and all(np.isfinite(r["loss"]) for r in res.log)
    check_trained_model(res.payload, 32)
