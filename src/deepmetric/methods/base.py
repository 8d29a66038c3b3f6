"""The method interface: everything the training loop, evaluation and export need from a DML method.

A method is one module in this package declaring its typed hyper-parameters (`Params`, with its paper's
defaults), its heads, its batch composition, its loss for a batch, optional per-epoch hooks, and which
embedding is the test/export embedding. The training loop (`deepmetric.training.loop`) knows nothing else
about it. A method registers itself in `METHODS` with
``@register("name", kind="seed" | "baseline", paper=..., doc="docs/methods/<name>.md")``; being a module of this
package is enough for it to be found (`deepmetric.methods` discovers them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal, Protocol, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from deepmetric.models.backbones import Backbone
from deepmetric.registry import Registry


class MethodParams(BaseModel):
    """Base of every method's hyper-parameter block (`train.methods.<name>`). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class BatchConfig(BaseModel):
    """`train.batch`: class-balanced batches of P classes × K images (a method may override)."""

    model_config = ConfigDict(extra="forbid")

    classes_per_batch: int = 16
    samples_per_class: int = 4

    @property
    def size(self) -> int:
        return self.classes_per_batch * self.samples_per_class


class TrainContext(Protocol):
    """What the training loop offers a method during `training_step` and `on_epoch_start`."""

    device: torch.device
    epoch: int  # 0-based
    epochs: int
    step: int  # global iteration count
    seed: int
    labels: np.ndarray  # labels of the training images, in dataset order
    optimizer: torch.optim.Optimizer

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """zero_grad → backward (AMP-scaled where enabled) → step."""

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Training-augmented, normalised images and their labels, on `device`."""

    def extract(self, fn: Any, batch_size: int | None = None) -> np.ndarray:
        """Run `fn(images)` without gradients over every training image (evaluation transform), in order."""

    def set_lr_scale(self, group: str, scale: float) -> None:
        """Scale the learning rate of the optimiser group named `group` (0 freezes it). Scales reset to 1
        at the start of every epoch, before `on_epoch_start`."""

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The global batch of each tensor (dim 0 = this process's images). With several training processes
        the embeddings and labels of every rank, in the sampler's order, with gradients flowing to this
        rank's part; in one process the tensors themselves. Call it on what the loss sees, before the loss."""


def class_balanced_batches(
    labels: np.ndarray, batch: BatchConfig, seed: int, num_batches: int
) -> Iterator[list[int]]:
    """P classes × K samples per batch, via pytorch-metric-learning's `MPerClassSampler`.

    Classes with fewer than K images are sampled with replacement (the sampler's own rule). Seeded so that a
    resumed epoch draws the same batches.
    """
    from pytorch_metric_learning.samplers import MPerClassSampler

    k = batch.samples_per_class
    size = batch.size
    n_classes = len(np.unique(labels))
    if n_classes * k < size:
        raise ValueError(
            f"a batch of {batch.classes_per_batch} classes × {k} needs {batch.classes_per_batch} classes, "
            f"the training split has {n_classes}"
        )
    # The sampler draws from pytorch-metric-learning's numpy generator (`c_f.NUMPY_RANDOM`, numpy's global one by
    # default): seed it for this call only, so the batches depend on `seed` alone (every rank of a distributed
    # run, and a resumed run, draws the same ones), and restore it afterwards.
    from pytorch_metric_learning.utils import common_functions as c_f

    rng = c_f.NUMPY_RANDOM
    state = rng.get_state()
    rng.seed(int(seed) % (2**32))
    try:
        sampler = MPerClassSampler(labels, m=k, batch_size=size, length_before_new_iter=size * num_batches)
        order = [int(i) for i in sampler]
    finally:
        rng.set_state(state)
    for b in range(num_batches):
        yield order[b * size : (b + 1) * size]


class Method(nn.Module):
    """Base class: a backbone + a linear embedding head; subclasses add their loss and hooks."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[MethodParams]] = MethodParams
    # A batch from `batch_sampler` is this many equal consecutive sections that `training_step` treats apart
    # (Sharing: class batch + surrogate batch); with several processes each rank takes its share of each.
    batch_sections: ClassVar[int] = 1

    def __init__(self, params: MethodParams, backbone: Backbone, embedding_dim: int | None, num_classes: int) -> None:
        super().__init__()
        self.params = params
        self.backbone = backbone
        # `train.embedding_dim: null`: no head, the embedding is the backbone's pooled feature (its width, e.g. a
        # ViT-S's 384-d class token, as Hyp-ViT and open-metric-learning's ViT models); subclasses read
        # `self.embedding_dim`.
        self.embedding_dim = backbone.feature_dim if embedding_dim is None else embedding_dim
        self.num_classes = num_classes
        self.head = nn.Identity() if embedding_dim is None else nn.Linear(backbone.feature_dim, embedding_dim)

    # --- declarations -------------------------------------------------------------------------------
    @classmethod
    def backbone_options(cls, params: MethodParams) -> dict[str, Any]:
        """Backbone settings the paper uses (pool, frozen_bn); applied unless the user sets them."""
        return {}

    def batch_sampler(self, labels: np.ndarray, batch: BatchConfig, seed: int, num_batches: int) -> Iterator[list[int]]:
        """Indices of each training batch for one epoch."""
        return class_balanced_batches(labels, batch, seed, num_batches)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups, each with a unique ``name`` (the loop can rescale a group by name). The backbone's come
        from `Backbone.param_groups`: one group ``backbone``, or several ``backbone@<part>`` (layer-wise lr decay,
        weight-decay exclusions) that `lr_group` maps back to ``backbone``."""
        return [
            *self.backbone.param_groups(lr, weight_decay),
            {"name": "head", "params": list(self.head.parameters()), "lr": lr, "weight_decay": weight_decay},
        ]

    # --- training -----------------------------------------------------------------------------------
    def on_epoch_start(self, ctx: TrainContext) -> None:  # noqa: B027 - optional hook
        """Per-epoch hook (re-clustering, freezing…)."""

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"method {self.name!r} defines no loss")

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> dict[str, float]:
        """One iteration. The default: one forward, `loss` on the global batch, one optimiser step."""
        embeddings, labels = ctx.gather(self(images), labels)
        loss = self.loss(embeddings, labels)
        ctx.optimizer_step(loss)
        return {"loss": float(loss.detach())}

    # --- inference ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training embedding (not normalised) from normalised images."""
        return self.head(self.backbone(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The test embedding, L2-normalised. Evaluation and ONNX export use exactly this."""
        return F.normalize(self(x), dim=-1)

    def export_module(self) -> nn.Module:
        """A module computing `embed` (what ONNX export traces); override to drop training-only parts."""
        return _Embedder(self)

    @property
    def test_embedding_dim(self) -> int:
        return self.embedding_dim


def lr_group(name: str) -> str:
    """The group an optimiser group belongs to for `train.optimizer.group_lr` and `TrainContext.set_lr_scale`:
    ``backbone@layer3_decay`` → ``backbone`` (a part of a group split by `Backbone.param_groups`), else itself."""
    return name.split("@", 1)[0]


class _Embedder(nn.Module):
    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.embed(x)


# Every method, by its `train.method` name. Metadata: `kind` (seed: a paper this project reproduces; baseline: a
# pytorch-metric-learning loss), `paper` (authors: title (venue year)), `doc` (its page under docs/methods/).
METHODS: Registry[type[Method]] = Registry("method", required=("kind", "paper", "doc"))
MethodKind = Literal["seed", "baseline"]
METHOD_KINDS: tuple[str, ...] = get_args(MethodKind)


def register(name: str, *, kind: MethodKind, paper: str, doc: str):
    """Class decorator: register a `Method` subclass as `train.method: name` and set its ``name``."""
    if kind not in METHOD_KINDS:
        raise ValueError(f"method {name!r}: kind must be one of {METHOD_KINDS}, got {kind!r}")

    def deco(cls: type[Method]) -> type[Method]:
        METHODS.add(name, cls, kind=kind, paper=paper, doc=doc)
        cls.name = name
        return cls

    return deco
