"""Triplet margin loss with semi-hard mining (Schroff et al., FaceNet, CVPR 2015) from pytorch-metric-learning —
`train.method: triplet` (docs/methods/baselines.md)."""

from __future__ import annotations

from pydantic import Field
from pytorch_metric_learning import losses, miners

from deepmetric.methods.base import MethodParams, register
from deepmetric.methods.losses import PMLLossMethod


class TripletParams(MethodParams):
    margin: float = Field(0.2, gt=0)
    mining: str = Field("semihard", pattern="^(all|hard|semihard|easy)$")


@register(
    "triplet",
    kind="baseline",
    paper="Schroff, Kalenichenko, Philbin: FaceNet: A Unified Embedding for Face Recognition and Clustering "
    "(CVPR 2015)",
    doc="docs/methods/baselines.md",
)
class TripletMethod(PMLLossMethod):
    Params = TripletParams

    def build_loss(self, params: TripletParams):
        return (losses.TripletMarginLoss(margin=params.margin),
                miners.TripletMarginMiner(margin=params.margin, type_of_triplets=params.mining))
