"""Sharing Matters for Generalization in DML (Milbich*, Roth*, Brattoli, Ommer, TPAMI 2020) — `train.method: sharing`.

Two linear heads on the shared backbone feature: the class-discriminative embedding φ_c (`embedding_dim`) and the
shared embedding φ_s (`shared_dim`), both L2-normalised. Each iteration takes two batches and makes two optimiser
steps, as the authors' code:

1. a class-balanced batch: margin loss with distance-weighted sampling on φ_c (one triplet per anchor: a random
   positive and a distance-weighted negative, as the authors' `distanceweightedsampling`), + `adv_weight` × the
   adversarial decorrelation term; optimiser step;
2. a random "surrogate" batch, in consecutive groups of `group_size` images of *different* classes that share a
   surrogate label: shared triplets on φ_s — the positive is another member of the anchor's group (so never of the
   anchor's class), the negative is distance-weighted among images with neither the anchor's surrogate label nor
   its class — margin loss, + the adversarial term; second optimiser step.

Adversarial decorrelation: a regressor r (shared_dim → 512 → embedding_dim MLP) maximises
mean((φ_c ⊙ normalise(r(φ_s)))²); both embeddings reach it through a gradient-reversal layer, so the encoders
minimise that similarity. Backbone BatchNorm frozen. The test embedding is φ_c (option: [φ_c | φ_s]).
See `docs/methods/sharing.md`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from deepmetric.methods.base import BatchConfig, Method, MethodParams, class_balanced_batches, register
from deepmetric.methods.losses import MarginParams, distance_weighted_miner, margin_loss
from deepmetric.methods.sampling import inverse_sphere_log_density, negative_probabilities


class SharingParams(MarginParams):
    # Margin loss (the authors' code): β 1.2 learnable per class with lr 5e-4 (absolute: class_beta_lr), γ 0.2;
    # distance-weighted sampling clamped at 0.5 with the upper cut-off disabled in the authors' code (≥ 2 disables),
    # one (random positive, distance-weighted negative) triplet per anchor.
    learn_beta: bool = True
    beta_lr: float | None = Field(5e-4, gt=0, description="lr of β (absolute; class_beta_lr / intra_beta_lr)")
    dw_nonzero_loss_cutoff: float = Field(4.0, gt=0, description="≥ 2 disables it (the authors' code)")
    dw_triplets: Literal["pair", "anchor"] = Field("anchor", description="one triplet per anchor (authors' code)")
    shared_dim: int = Field(128, gt=0, description="size of the shared embedding (intraclassembed = 128)")
    group_size: int = Field(4, ge=2, description="images per surrogate group (samples_per_class = 4)")
    shared_weight: float = Field(1.0, ge=0, description="weight of the shared margin loss")
    # disw: default 500 (runs script: Cars196 900, CUB 2400).
    adv_weight: float = Field(500.0, ge=0, description="weight of the adversarial decorrelation term (disw)")
    adv_hidden: int = Field(512, gt=0, description="hidden units of the regressor")
    adv_weight_decay: float = Field(1e-6, ge=0, description="regressor weight decay")
    test_embedding: Literal["class", "concat"] = Field("class", description="φ_c (spliteval) or [φ_c | φ_s]")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return -grad


def grad_reverse(x: torch.Tensor) -> torch.Tensor:
    """Identity forward, negated gradient backward."""
    return _GradReverse.apply(x)


class AdversarialDecorrelation(nn.Module):
    """Loss = −mean((φ_c ⊙ normalise(r(φ_s)))²) through gradient reversal on φ_c and φ_s.

    Minimising it makes the regressor r *maximise* the similarity; the encoders, receiving the reversed gradient,
    *minimise* it — they decorrelate the two embeddings.
    """

    def __init__(self, shared_dim: int, class_dim: int, hidden: int) -> None:
        super().__init__()
        self.regressor = nn.Sequential(nn.Linear(shared_dim, hidden), nn.ReLU(), nn.Linear(hidden, class_dim))

    def similarity(self, class_emb: torch.Tensor, shared_emb: torch.Tensor) -> torch.Tensor:
        return (class_emb * F.normalize(self.regressor(shared_emb), dim=-1)).pow(2).mean()

    def forward(self, class_emb: torch.Tensor, shared_emb: torch.Tensor) -> torch.Tensor:
        return -self.similarity(grad_reverse(class_emb), grad_reverse(shared_emb))


def surrogate_batch(labels: np.ndarray, batch_size: int, group_size: int, rng: np.random.Generator) -> list[int]:
    """A random batch in consecutive groups of `group_size` images, the images of a group from distinct classes.

    Images are drawn uniformly (no class balancing, as `RandomizedDataset_wLabel`); an image whose class is already
    in its group is redrawn. The group of position i is i // group_size (its surrogate label).
    """
    n_classes = len(np.unique(labels))
    if n_classes < group_size:
        raise ValueError(f"sharing.group_size {group_size} needs that many classes; the split has {n_classes}")
    out: list[int] = []
    while len(out) < batch_size:
        group: list[int] = []
        seen: set[int] = set()
        while len(group) < min(group_size, batch_size - len(out)):
            i = int(rng.integers(len(labels)))
            if int(labels[i]) not in seen:
                seen.add(int(labels[i]))
                group.append(i)
        out.extend(group)
    return out


def shared_triplets(
    emb: torch.Tensor, classes: torch.Tensor, surrogate: torch.Tensor, cutoff: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices of the shared triplets (`distanceweightedsampling_noise`).

    Positive: uniformly random among the anchor's surrogate group, excluding images of the anchor's class.
    Negative: distance-weighted (on detached distances, in log space, normalised per anchor) among images with
    neither the anchor's surrogate label nor its class. Anchors without a valid positive or negative are skipped.
    """
    with torch.no_grad():
        same_class = classes[:, None] == classes[None, :]
        same_group = surrogate[:, None] == surrogate[None, :]
        pos_ok = same_group & ~same_class  # excludes the anchor itself (same class)
        neg_ok = ~same_group & ~same_class
        dist = torch.cdist(emb.detach().float(), emb.detach().float())
        probs = negative_probabilities(inverse_sphere_log_density(dist, emb.shape[1], cutoff), neg_ok)
        valid = pos_ok.any(1) & neg_ok.any(1)
        anchors = torch.nonzero(valid).flatten()
        if len(anchors) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=emb.device)
            return empty, empty, empty
        negatives = torch.multinomial(probs[anchors].cpu(), 1, generator=generator).flatten().to(emb.device)
        positives = torch.multinomial(pos_ok[anchors].float().cpu(), 1, generator=generator).flatten().to(emb.device)
    return anchors, positives, negatives


@register(
    "sharing",
    kind="seed",
    paper="Milbich, Roth, Brattoli, Ommer: Sharing Matters for Generalization in Deep Metric Learning (TPAMI 2020)",
    doc="docs/methods/sharing.md",
)
class SharingMethod(Method):
    Params = SharingParams
    batch_sections = 2  # [class-balanced batch | surrogate batch]

    def __init__(self, params: SharingParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.shared_head = nn.Linear(backbone.feature_dim, params.shared_dim)
        self.adversary = AdversarialDecorrelation(params.shared_dim, self.embedding_dim, params.adv_hidden)
        self.class_criterion = margin_loss(params, num_classes)
        # surrogate labels are arbitrary group ids: one (learnable) β for the shared loss
        self.shared_criterion = margin_loss(params, None)
        self.miner = distance_weighted_miner(params)

    @classmethod
    def backbone_options(cls, params: MethodParams) -> dict[str, Any]:
        # ResNet-50 with BatchNorm statistics frozen (eval mode; γ/β stay in the optimiser, as `netlib.py` of the
        # authors' code), average pooling (docs/methods/sharing.md).
        return {"pool": "avg", "frozen_bn": "stats"}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        p = self.params
        groups = super().param_groups(lr, weight_decay)
        groups.append({"name": "shared_head", "params": list(self.shared_head.parameters()), "lr": lr,
                       "weight_decay": weight_decay})
        groups.append({"name": "regressor", "params": list(self.adversary.parameters()), "lr": lr,
                       "weight_decay": p.adv_weight_decay})
        return groups + p.loss_group(
            list(self.class_criterion.parameters()) + list(self.shared_criterion.parameters()), lr
        )

    # --- batches: [class-balanced batch | surrogate batch] -----------------------------------------------------
    def batch_sampler(self, labels: np.ndarray, batch: BatchConfig, seed: int, num_batches: int) -> Iterator[list[int]]:
        """Each list holds the class batch followed by a surrogate batch of the same size (`training_step` splits
        it in half)."""
        labels = np.asarray(labels)
        rng = np.random.default_rng([seed, 1])
        class_batches = class_balanced_batches(labels, batch, seed, num_batches)
        return iter([cb + surrogate_batch(labels, batch.size, self.params.group_size, rng) for cb in class_batches])

    # --- model --------------------------------------------------------------------------------------------------
    def embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(φ_c, φ_s), each L2-normalised."""
        h = self.backbone(x)
        return F.normalize(self.head(h), dim=-1), F.normalize(self.shared_head(h), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.params.test_embedding == "class":  # the shared head is not computed (nor exported)
            return F.normalize(self.head(self.backbone(x)), dim=-1)
        c, s = self.embeddings(x)
        return torch.cat([c, s], dim=-1)

    @property
    def test_embedding_dim(self) -> int:
        return self.embedding_dim + (self.params.shared_dim if self.params.test_embedding == "concat" else 0)

    # --- losses -------------------------------------------------------------------------------------------------
    def class_losses(self, images: torch.Tensor, labels: torch.Tensor, ctx=None) -> dict[str, torch.Tensor]:
        c, s = self.embeddings(images)
        if ctx is not None:
            c, s, labels = ctx.gather(c, s, labels)
        margin = self.class_criterion(c, labels, self.miner(c, labels))
        adv = self.adversary(c, s)
        return {"loss": margin + self.params.adv_weight * adv, "margin": margin, "adv": adv}

    def shared_losses(self, images: torch.Tensor, labels: torch.Tensor, ctx=None) -> dict[str, torch.Tensor]:
        c, s = self.embeddings(images)
        if ctx is not None:
            c, s, labels = ctx.gather(c, s, labels)
        surrogate = torch.arange(len(labels), device=images.device) // self.params.group_size
        triplets = shared_triplets(s, labels, surrogate, self.params.dw_cutoff)
        shared = self.shared_criterion(s, surrogate, triplets)
        adv = self.adversary(c, s)
        return {"loss": self.params.shared_weight * shared + self.params.adv_weight * adv, "shared": shared,
                "adv_shared": adv}

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        c = F.normalize(embeddings[:, : self.embedding_dim], dim=-1)
        return self.class_criterion(c, labels, self.miner(c, labels))

    def training_step(self, images: torch.Tensor, labels: torch.Tensor, ctx) -> dict[str, float]:
        half = len(images) // 2
        first = self.class_losses(images[:half], labels[:half], ctx)
        ctx.optimizer_step(first["loss"])  # step 1: class batch
        second = self.shared_losses(images[half:], labels[half:], ctx)
        ctx.optimizer_step(second["loss"])  # step 2: surrogate batch
        out = {k: float(v.detach()) for k, v in first.items()}
        out.update({k: float(v.detach()) for k, v in second.items() if k != "loss"})
        out["loss"] = float(first["loss"].detach()) + float(second["loss"].detach())
        return out
