"""The `TrainContext` a method sees during training (`deepmetric.methods.base.TrainContext`), and the one function
that embeds a set of images in shards over the ranks (validation and ``ctx.extract`` both use it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.transforms import InputSpec
from deepmetric.evaluation.embed import embed_dataset
from deepmetric.methods import Method
from deepmetric.methods.base import lr_group
from deepmetric.models.preprocess import to_model_input
from deepmetric.training.data import TrainLoader
from deepmetric.training.distributed import GradientSync, SingleProcess
from deepmetric.training.precision import Precision


def embed_sharded(strategy: SingleProcess, fn: Callable[[torch.Tensor], torch.Tensor], images: ManifestImages,
                  batch_size: int, device: torch.device, num_workers: int = 0) -> np.ndarray:
    """``fn`` (uint8 batches → embeddings) over every image, in order: each rank embeds its contiguous shard and
    every rank gets the whole."""
    return strategy.embed_shards(lambda start, stop: embed_dataset(
        fn, torch.utils.data.Subset(images, range(start, stop)), batch_size, device, num_workers=num_workers,
    ), len(images))


@dataclass
class LoopContext:
    """What the training loop hands a method (`TrainContext`): the step's state, the optimiser step, the global
    batch, extra images, embeddings of the training set, learning-rate scales."""

    method: Method
    optimizer: torch.optim.Optimizer
    device: torch.device
    labels: np.ndarray
    seed: int
    epochs: int
    loader: TrainLoader
    eval_images: ManifestImages
    spec: InputSpec
    eval_batch_size: int
    precision: Precision
    eval_workers: int = 0
    strategy: SingleProcess = field(default_factory=SingleProcess)
    grad_sync: GradientSync | None = None
    epoch: int = 0
    step: int = 0
    lr_scales: dict[str, float] = field(default_factory=dict)
    base_lrs: dict[str, float] = field(default_factory=dict)
    lr_factor: float = 1.0

    def optimizer_step(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss.detach())} at epoch {self.epoch}, step {self.step}")
        self.precision.backward_step(loss, self.optimizer, self.grad_sync)

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.strategy.gather(*tensors)

    def batch(self, indices: Sequence[int], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised model input and the labels of the images ``indices`` (uint8 NCHW on the device)."""
        labels = torch.as_tensor(self.labels[np.asarray(indices, dtype=np.int64)], device=self.device)
        return to_model_input(images, self.spec.mean, self.spec.std), labels

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(indices, self.loader.load(indices, self.seed, self.step))

    def extract(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int | None = None) -> np.ndarray:
        was = self.method.training
        self.method.eval()
        try:
            return embed_sharded(self.strategy, lambda x: fn(to_model_input(x, self.spec.mean, self.spec.std)),
                                 self.eval_images, batch_size or self.eval_batch_size, self.device,
                                 self.eval_workers)
        finally:
            self.method.train(was)

    def set_lr_scale(self, group: str, scale: float) -> None:
        """A group split in parts (``backbone@…``: layer-wise lr decay) is scaled as a whole (`lr_group`)."""
        groups = {lr_group(name) for name in self.base_lrs}
        if group not in groups:
            raise KeyError(f"no optimiser group named {group!r}; groups: {sorted(groups)}")
        self.lr_scales[group] = scale
        self._apply_lrs()

    def reset_lr(self, factor: float) -> None:
        """The schedule's factor for this epoch; every group's scale back to 1 (before ``on_epoch_start``)."""
        self.lr_scales = {}
        self.lr_factor = factor
        self._apply_lrs()

    def _apply_lrs(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lrs[g["name"]] * self.lr_factor * self.lr_scales.get(lr_group(g["name"]), 1.0)

    def close(self) -> None:
        """Stop the loader's workers and the gradient hooks."""
        self.loader.close()
        if self.grad_sync is not None:
            self.grad_sync.remove()
