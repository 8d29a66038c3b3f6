"""Contrastive loss (Hadsell, Chopra, LeCun, CVPR 2006) from pytorch-metric-learning, over every pair of the
batch — `train.method: contrastive` (docs/methods/baselines.md)."""

from __future__ import annotations

from pydantic import Field
from pytorch_metric_learning import losses

from deepmetric.methods.base import MethodParams, register
from deepmetric.methods.losses import PMLLossMethod


class ContrastiveParams(MethodParams):
    pos_margin: float = Field(0.0, ge=0)
    neg_margin: float = Field(1.0, gt=0)


@register(
    "contrastive",
    kind="baseline",
    paper="Hadsell, Chopra, LeCun: Dimensionality Reduction by Learning an Invariant Mapping (CVPR 2006)",
    doc="docs/methods/baselines.md",
)
class ContrastiveMethod(PMLLossMethod):
    Params = ContrastiveParams

    def build_loss(self, params: ContrastiveParams):
        return losses.ContrastiveLoss(pos_margin=params.pos_margin, neg_margin=params.neg_margin), None
