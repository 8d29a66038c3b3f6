"""Multi-Similarity loss and miner (Wang et al., CVPR 2019) from pytorch-metric-learning —
`train.method: multi_similarity` (docs/methods/baselines.md)."""

from __future__ import annotations

from pydantic import Field
from pytorch_metric_learning import losses, miners

from deepmetric.methods.base import MethodParams, register
from deepmetric.methods.losses import PMLLossMethod


class MultiSimilarityParams(MethodParams):
    alpha: float = Field(2.0, gt=0)
    beta: float = Field(50.0, gt=0)
    base: float = Field(0.5)
    miner_epsilon: float = Field(0.1, ge=0)


@register(
    "multi_similarity",
    kind="baseline",
    paper="Wang, Han, Huang, Dong, Scott: Multi-Similarity Loss with General Pair Weighting for Deep Metric Learning "
    "(CVPR 2019)",
    doc="docs/methods/baselines.md",
)
class MultiSimilarityMethod(PMLLossMethod):
    Params = MultiSimilarityParams

    def build_loss(self, params: MultiSimilarityParams):
        return (losses.MultiSimilarityLoss(alpha=params.alpha, beta=params.beta, base=params.base),
                miners.MultiSimilarityMiner(epsilon=params.miner_epsilon))
