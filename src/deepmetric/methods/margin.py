"""Margin loss with distance-weighted sampling (Wu et al., ICCV 2017) — `train.method: margin`, the project's
default and the reference every other method is measured against (docs/methods/baselines.md)."""

from __future__ import annotations

from typing import Any

from deepmetric.methods.base import register
from deepmetric.methods.losses import MarginParams, PMLLossMethod, distance_weighted_miner, margin_loss


@register(
    "margin",
    kind="baseline",
    paper="Wu, Manmatha, Smola, Krähenbühl: Sampling Matters in Deep Embedding Learning (ICCV 2017)",
    doc="docs/methods/baselines.md",
)
class MarginMethod(PMLLossMethod):
    Params = MarginParams

    def build_loss(self, params: MarginParams):
        return margin_loss(params, self.num_classes), distance_weighted_miner(params)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return super().param_groups(lr, weight_decay) + self.params.loss_group(list(self.criterion.parameters()), lr)
