"""Ranked List Loss (Wang et al., CVPR 2019; TPAMI 2021) — `train.method: ranked_list`.

Every sample of the batch is a query and the rest of the batch its gallery. With d the Euclidean distance
between L2-normalised embeddings, α the negative boundary and m the margin:

- non-trivial positives  P* = {j ≠ i, y_j = y_i, d_ij > α − m},
- non-trivial negatives  N* = {j, y_j ≠ y_i, d_ij < α},
- L_P(i) = Σ_{P*} w⁺_ij (d_ij − (α − m)),  w⁺ ∝ exp(T_p (d − (α − m))) normalised over P*  (T_p = 0: a plain mean),
- L_N(i) = Σ_{N*} w⁻_ij (α − d_ij),        w⁻ ∝ exp(T_n (α − d)) normalised over N*,
- L(i)   = (L_P(i) + λ L_N(i)) / (1 + λ)   (λ = 1: 0.5 each, as the authors' Caffe layer),

hinges linear in the distance (not squared). The pair weights are constants in the backward pass, as in the
Caffe layer, whose gradient for a pair is the weight times the unit vector between the two embeddings.
Queries combine by a mean (default) or by the Caffe layer's query weighting (each query's share of the batch's
total raw pair weight). See `docs/methods/ranked_list.md`.

Option `multi_level` (the paper's RLL-(L,M,H)): extra embedding heads on earlier backbone stages, each with its
own RLL; at test the L2-normalised heads are concatenated and re-normalised.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from deepmetric.methods.base import Method, MethodParams, register


class RankedListParams(MethodParams):
    # The paper's headline setting is α = 1.2, m = 0.4, T_n = 10, embedding 512; the authors' SOP Caffe config
    # uses exactly these (CUB: α = 1.4, m = 0.2).
    alpha: float = Field(1.2, gt=0, le=2, description="α: negatives closer than α are violating")
    margin: float = Field(0.4, gt=0, le=2, description="m: positives farther than α − m are violating")
    t_n: float = Field(10.0, ge=0, le=50, description="T_n: temperature of the negative weighting")
    t_p: float = Field(0.0, ge=0, le=50, description="T_p: temperature of the positive weighting (0: uniform)")
    lam: float = Field(1.0, ge=0, description="λ: weight of the negative part; L = (L_P + λ L_N) / (1 + λ)")
    # The authors' Caffe layer weights each query by its share of the batch's total pair weight.
    query_weighting: Literal["mean", "caffe"] = Field("mean", description="mean over queries | Caffe weighting")
    # The authors' TPAMI-era layer hard-codes the boundaries to 1 ± m/2 (only m matters).
    tpami_boundaries: bool = Field(False, description="use α = 1 + m/2 and α − m = 1 − m/2 (TPAMI code)")
    # RLL-(L,M,H): heads on earlier stages (0-based indices into backbone stages; the final head is implicit).
    multi_level: bool = False
    multi_level_stages: list[int] = Field(default_factory=lambda: [1, 2])
    aux_hidden: int = Field(1024, gt=0, description="hidden width of the auxiliary heads (paper: 1024)")
    aux_reduce: int = Field(128, gt=0, description="1×1-conv width of the auxiliary heads (paper: 128)")
    head_lr_mult: float = Field(1.0, gt=0, description="lr multiplier of the new heads (Caffe: lr_mult 100)")

    @model_validator(mode="after")
    def _check(self) -> RankedListParams:
        if self.margin >= self.effective_alpha and not self.tpami_boundaries:
            raise ValueError(f"margin {self.margin} must be smaller than alpha {self.alpha} (α − m > 0)")
        if len(set(self.multi_level_stages)) != len(self.multi_level_stages):
            raise ValueError("multi_level_stages has duplicates")
        return self

    @property
    def effective_alpha(self) -> float:
        return 1.0 + self.margin / 2 if self.tpami_boundaries else self.alpha


def pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances with a finite gradient at 0 (the diagonal is masked out by the callers)."""
    sq = (x.unsqueeze(1) - x.unsqueeze(0)).pow(2).sum(-1)
    return sq.clamp_min(eps).sqrt()


def ranked_list_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.2,
    margin: float = 0.4,
    t_n: float = 10.0,
    t_p: float = 0.0,
    lam: float = 1.0,
    query_weighting: str = "mean",
    normalize: bool = True,
) -> torch.Tensor:
    """The Ranked List Loss of a batch (see the module docstring)."""
    x = F.normalize(embeddings, dim=-1) if normalize else embeddings
    d = pairwise_distances(x)
    n = len(labels)
    same = labels.unsqueeze(1) == labels.unsqueeze(0)
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    pos_bound = alpha - margin
    pos = same & ~eye & (d > pos_bound)
    neg = ~same & (d < alpha)

    with torch.no_grad():  # the weights are constants in the gradient, as in the Caffe layer
        dd = d.detach()
        # log-space softmax per query over its own violating pairs (exp(T·v) overflows otherwise)
        zp = torch.where(pos, t_p * (dd - pos_bound), torch.full_like(dd, -torch.inf))
        zn = torch.where(neg, t_n * (alpha - dd), torch.full_like(dd, -torch.inf))
        wp = torch.nan_to_num(torch.softmax(zp, dim=1), nan=0.0)  # rows without a violation: all 0
        wn = torch.nan_to_num(torch.softmax(zn, dim=1), nan=0.0)
    loss_p = (wp * (d - pos_bound) * pos).sum(1)
    loss_n = (wn * (alpha - d) * neg).sum(1)
    per_query = (loss_p + lam * loss_n) / (1.0 + lam)
    if query_weighting == "mean":
        return per_query.mean()
    if query_weighting == "caffe":
        with torch.no_grad():
            raw = (torch.exp(zp) * pos).sum(1) + (torch.exp(zn) * neg).sum(1)  # unnormalised pair weights
            total = raw.sum()
            qw = raw / total if total > 0 else torch.zeros_like(raw)
        return (qw * per_query).sum()
    raise ValueError(f"unknown query_weighting {query_weighting!r}")


class AuxHead(nn.Module):
    """An intermediate-stage embedding head (the paper's L / M branches on Inception-BN).

    Paper: avg-pool → 1×1 conv (128) → BN → ReLU → FC 1024 → BN → ReLU → FC 512. Here the pool is global (the
    spatial map of a small-input ResNet stage is tiny), so the 1×1 conv is a linear layer on the pooled vector.
    """

    def __init__(self, in_dim: int, out_dim: int, reduce: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, reduce), nn.BatchNorm1d(reduce), nn.ReLU(),
            nn.Linear(reduce, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.net(fmap.mean(dim=(2, 3)))


@register(
    "ranked_list",
    kind="seed",
    paper="Wang, Hua, Kodirov, Hu, Garnier, Robertson: "
    "Ranked List Loss for Deep Metric Learning (CVPR 2019; TPAMI 2021)",
    doc="docs/methods/ranked_list.md",
)
class RankedListMethod(Method):
    Params = RankedListParams

    def __init__(self, params: RankedListParams, backbone, embedding_dim: int, num_classes: int) -> None:
        super().__init__(params, backbone, embedding_dim, num_classes)
        self.aux = nn.ModuleList()
        if params.multi_level:
            n_stages = len(backbone.stage_dims)
            for s in params.multi_level_stages:
                if not 0 <= s < n_stages - 1:
                    raise ValueError(
                        f"ranked_list.multi_level_stages: stage {s} is not an intermediate stage "
                        f"(0..{n_stages - 2} for this backbone; the last stage has the main head)"
                    )
            self.aux = nn.ModuleList(
                AuxHead(backbone.stage_dims[s], self.embedding_dim, params.aux_reduce, params.aux_hidden)
                for s in params.multi_level_stages
            )

    @classmethod
    def backbone_options(cls, params: MethodParams) -> dict[str, Any]:
        # The authors' Inception-BN: trainable BatchNorm and average pooling (docs/methods/ranked_list.md).
        return {"pool": "avg", "frozen_bn": False}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        heads = list(self.head.parameters()) + list(self.aux.parameters())
        return [
            *self.backbone.param_groups(lr, weight_decay),
            {"name": "head", "params": heads, "lr": lr * self.params.head_lr_mult, "weight_decay": weight_decay},
        ]

    def heads_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Un-normalised embeddings of every head: the auxiliary (L, M) heads first, the final (H) head last."""
        if not self.params.multi_level:
            return [self.head(self.backbone(x))]
        pooled, stages = self.backbone.forward_with_stages(x)
        outs = [aux(stages[s]) for aux, s in zip(self.aux, self.params.multi_level_stages, strict=True)]
        outs.append(self.head(pooled))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.normalize(e, dim=-1) for e in self.heads_forward(x)], dim=-1)

    def _rll(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        p = self.params
        return ranked_list_loss(
            emb, labels, alpha=p.effective_alpha, margin=p.margin, t_n=p.t_n, t_p=p.t_p, lam=p.lam,
            query_weighting=p.query_weighting,
        )

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # one RLL per head (weight 1 each, as the Caffe prototxts)
        chunks = embeddings.split(self.embedding_dim, dim=-1)
        return sum(self._rll(c, labels) for c in chunks)

    @property
    def test_embedding_dim(self) -> int:
        return self.embedding_dim * (1 + len(self.aux))
