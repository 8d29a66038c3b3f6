"""Baselines from pytorch-metric-learning (a well-kept, tested implementation of each loss and miner).

Each wraps a PML loss (and miner) behind the method interface: `margin` (margin loss + distance-weighted
sampling, Wu et al. 2017), `triplet` (semi-hard mining), `multi_similarity`, `proxy_anchor`, `contrastive`.
Embeddings are L2-normalised before every loss (PML's default `LpDistance` normalises too). Distance-weighted
sampling is this project's (`deepmetric.methods.sampling`, per-anchor as Wu et al.), not PML's miner, which
drops anchors at high dimension (kept as `dw_impl: pml` for comparison).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from pytorch_metric_learning import losses, miners

from deepmetric.methods.base import Method, MethodParams, register
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


@register("margin")
class MarginMethod(Method):
    Params = MarginParams

    def __init__(self, params: MarginParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion = margin_loss(params, num_classes)
        self.miner = distance_weighted_miner(params)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return super().param_groups(lr, weight_decay) + self.params.loss_group(list(self.criterion.parameters()), lr)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings, dim=-1)
        return self.criterion(emb, labels, self.miner(emb, labels))


class TripletParams(MethodParams):
    margin: float = Field(0.2, gt=0)
    mining: str = Field("semihard", pattern="^(all|hard|semihard|easy)$")


@register("triplet")
class TripletMethod(Method):
    Params = TripletParams

    def __init__(self, params: TripletParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion = losses.TripletMarginLoss(margin=params.margin)
        self.miner = miners.TripletMarginMiner(margin=params.margin, type_of_triplets=params.mining)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings, dim=-1)
        return self.criterion(emb, labels, self.miner(emb, labels))


class MultiSimilarityParams(MethodParams):
    alpha: float = Field(2.0, gt=0)
    beta: float = Field(50.0, gt=0)
    base: float = Field(0.5)
    miner_epsilon: float = Field(0.1, ge=0)


@register("multi_similarity")
class MultiSimilarityMethod(Method):
    Params = MultiSimilarityParams

    def __init__(self, params: MultiSimilarityParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion = losses.MultiSimilarityLoss(alpha=params.alpha, beta=params.beta, base=params.base)
        self.miner = miners.MultiSimilarityMiner(epsilon=params.miner_epsilon)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        emb = F.normalize(embeddings, dim=-1)
        return self.criterion(emb, labels, self.miner(emb, labels))


class ProxyAnchorParams(MethodParams):
    margin: float = Field(0.1, ge=0)
    alpha: float = Field(32.0, gt=0)
    proxy_lr_mult: float = Field(100.0, gt=0, description="proxies learn this much faster (paper: ×100)")


@register("proxy_anchor")
class ProxyAnchorMethod(Method):
    Params = ProxyAnchorParams

    def __init__(self, params: ProxyAnchorParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion = losses.ProxyAnchorLoss(
            num_classes=num_classes, embedding_size=embedding_dim, margin=params.margin, alpha=params.alpha
        )

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = super().param_groups(lr, weight_decay)
        groups.append(
            {"name": "proxies", "params": list(self.criterion.parameters()), "lr": lr * self.params.proxy_lr_mult,
             "weight_decay": 0.0}
        )
        return groups

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(F.normalize(embeddings, dim=-1), labels)


class ContrastiveParams(MethodParams):
    pos_margin: float = Field(0.0, ge=0)
    neg_margin: float = Field(1.0, gt=0)


@register("contrastive")
class ContrastiveMethod(Method):
    Params = ContrastiveParams

    def __init__(self, params: ContrastiveParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.criterion = losses.ContrastiveLoss(pos_margin=params.pos_margin, neg_margin=params.neg_margin)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.criterion(F.normalize(embeddings, dim=-1), labels)
