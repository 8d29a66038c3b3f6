"""Loss pieces shared by several methods, from pytorch-metric-learning (a well-kept, tested implementation of each
loss and miner).

- `MarginParams`, `margin_loss`, `distance_weighted_miner`: the margin loss with distance-weighted sampling (Wu et
  al. 2017), used by `margin`, and by `divide_conquer` and `sharing` where their papers train with it.
- `PMLLossMethod`: a method whose loss is one PML loss (and optionally a miner) on the L2-normalised embeddings
  (PML's default `LpDistance` normalises too): what every baseline is.

Distance-weighted sampling is this project's (`deepmetric.methods.sampling`, per-anchor as Wu et al.), not PML's
miner, which drops anchors at high dimension (kept as `dw_impl: pml` for comparison).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from pytorch_metric_learning import losses, miners
from torch import nn

from deepmetric.methods.base import Method, MethodParams
from deepmetric.methods.sampling import DistanceWeightedSampler


def margin_loss(params, num_classes: int | None) -> losses.MarginLoss:
    """Margin loss (Wu et al. 2017) from a params block with ``margin``, ``beta``, ``learn_beta``: one β per
    class when β is learnt and ``num_classes`` is given, else a single β. Shared by every margin-based method."""
    return losses.MarginLoss(
        margin=params.margin,
        nu=0,
        beta=params.beta,
        learn_beta=params.learn_beta,
        num_classes=num_classes if params.learn_beta else None,
    )


def distance_weighted_miner(params):
    """Distance-weighted sampling from a params block with ``dw_cutoff``, ``dw_nonzero_loss_cutoff``,
    ``dw_triplets`` and ``dw_impl``: this project's per-anchor sampler, or PML's miner (``dw_impl: pml``)."""
    if params.dw_impl == "pml":
        return miners.DistanceWeightedMiner(cutoff=params.dw_cutoff, nonzero_loss_cutoff=params.dw_nonzero_loss_cutoff)
    return DistanceWeightedSampler(params.dw_cutoff, params.dw_nonzero_loss_cutoff, params.dw_triplets)


class MarginParams(MethodParams):
    margin: float = Field(0.2, gt=0, description="γ, the margin around the boundary β")
    beta: float = Field(1.2, gt=0, description="β, initial boundary between positives and negatives")
    learn_beta: bool = Field(True, description="learn one β per class (Wu et al.)")
    # An absolute learning rate: β lives in distance units, so its step size must not scale with the backbone's lr.
    beta_lr: float | None = Field(None, gt=0, description="lr of β (absolute); null: train.optimizer.lr")
    dw_cutoff: float = Field(0.5, gt=0, description="lower distance cut-off of distance-weighted sampling")
    dw_nonzero_loss_cutoff: float = Field(1.4, gt=0, description="negatives farther than this get no weight (≥ 2: off)")
    dw_triplets: Literal["pair", "anchor"] = Field(
        "pair", description="pair: one negative per anchor-positive pair (Wu et al.); anchor: one triplet per anchor"
    )
    dw_impl: Literal["deepmetric", "pml"] = Field(
        "deepmetric", description="deepmetric: per-anchor sampler; pml: PML's DistanceWeightedMiner (comparison)"
    )

    def loss_group(self, params: list, lr: float) -> list[dict[str, Any]]:
        """The optimiser group of the margin loss's β (empty when β is fixed)."""
        if not params:
            return []
        return [{"name": "loss", "params": params, "lr": self.beta_lr or lr, "weight_decay": 0.0}]


class PMLLossMethod(Method):
    """Backbone + linear head trained by one PML loss (``criterion``) and an optional miner on the L2-normalised
    embeddings. A subclass says which in `build_loss`, called once the head exists (a loss with parameters, such as
    Proxy Anchor's proxies, is initialised after the head, from the same random stream)."""

    def __init__(self, params: MethodParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion, self.miner = self.build_loss(params)

    def build_loss(self, params: MethodParams) -> tuple[nn.Module, nn.Module | None]:
        """(the PML loss, its miner or None) for this method's params; ``self.embedding_dim`` and
        ``self.num_classes`` are set."""
        raise NotImplementedError(f"method {self.name!r} builds no loss")

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings, dim=-1)
        if self.miner is None:
            return self.criterion(emb, labels)
        return self.criterion(emb, labels, self.miner(emb, labels))
