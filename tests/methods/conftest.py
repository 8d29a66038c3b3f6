"""Shared pieces of the method tests: a tiny ResNet-18 and a minimal training context.

`SimpleContext` is a small, real implementation of `deepmetric.methods.base.TrainContext` over in-memory
tensors (the real one lives in `deepmetric.training.loop`), so a method's hooks can be exercised alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch

from deepmetric.models.backbones import BackboneConfig, build_backbone
from tests.fixtures import one_torch_thread


class SimpleContext:
    def __init__(self, method, images: torch.Tensor, labels: np.ndarray, lr: float = 1e-3, epochs: int = 4,
                 seed: int = 0) -> None:
        self.method = method
        self.images = images
        self.labels = np.asarray(labels)
        self.device = torch.device("cpu")
        self.epoch = 0
        self.epochs = epochs
        self.step = 0
        self.seed = seed
        groups = method.param_groups(lr, 0.0)
        for g in groups:
            g["base_lr"] = g["lr"]
        self.optimizer = torch.optim.Adam(groups)
        self.steps_taken = 0

    def begin_epoch(self, epoch: int) -> None:
        """What the loop does before `on_epoch_start`: set the epoch and reset every lr scale."""
        self.epoch = epoch
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"]

    def optimizer_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps_taken += 1

    def load(self, indices: Sequence[int]):
        idx = torch.as_tensor(list(indices))
        return self.images[idx], torch.as_tensor(self.labels[idx.numpy()])

    def extract(self, fn, batch_size: int | None = None) -> np.ndarray:
        was = self.method.training
        self.method.eval()
        with torch.no_grad():
            out = torch.cat([fn(self.images[i : i + 64]) for i in range(0, len(self.images), 64)])
        self.method.train(was)
        return out.numpy()

    def gather(self, *tensors: torch.Tensor):
        return tensors  # one process: the local batch is the global batch

    def set_lr_scale(self, group: str, scale: float) -> None:
        for g in self.optimizer.param_groups:
            if g["name"] == group:
                g["lr"] = g["base_lr"] * scale

    def lr_of(self, group: str) -> float:
        return next(g["lr"] for g in self.optimizer.param_groups if g["name"] == group)


@pytest.fixture
def tiny_backbone():
    def make(pool: str = "avg", frozen_bn: bool = False):
        torch.manual_seed(0)
        return build_backbone(BackboneConfig(name="resnet18", pool=pool, frozen_bn=frozen_bn))

    return make


@pytest.fixture
def two_class_batch():
    """Four 8-d embeddings, two pairs at opposite poles, with labels that make them (a) perfectly separated:
    positives at distance 0, negatives at 2; (b) swapped: each positive at 2, one negative at 0 and one at 2."""
    e = torch.zeros(8)
    e[0] = 3.0
    emb = torch.stack([e, e, -e, -e])
    return emb, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])


@pytest.fixture
def simple_context():
    return SimpleContext


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield
