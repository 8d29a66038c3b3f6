"""Proxy Anchor loss (Kim et al., CVPR 2020) from pytorch-metric-learning — `train.method: proxy_anchor`
(docs/methods/baselines.md). One proxy per training class, learnt `proxy_lr_mult` times faster than the network."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pytorch_metric_learning import losses

from deepmetric.methods.base import MethodParams, register
from deepmetric.methods.losses import PMLLossMethod


class ProxyAnchorParams(MethodParams):
    margin: float = Field(0.1, ge=0)
    alpha: float = Field(32.0, gt=0)
    proxy_lr_mult: float = Field(100.0, gt=0, description="proxies learn this much faster (paper: ×100)")


@register(
    "proxy_anchor",
    kind="baseline",
    paper="Kim, Kim, Cho, Kwak: Proxy Anchor Loss for Deep Metric Learning (CVPR 2020)",
    doc="docs/methods/baselines.md",
)
class ProxyAnchorMethod(PMLLossMethod):
    Params = ProxyAnchorParams

    def build_loss(self, params: ProxyAnchorParams):
        criterion = losses.ProxyAnchorLoss(
            num_classes=self.num_classes, embedding_size=self.embedding_dim, margin=params.margin, alpha=params.alpha
        )
        return criterion, None

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        groups = super().param_groups(lr, weight_decay)
        groups.append(
            {"name": "proxies", "params": list(self.criterion.parameters()), "lr": lr * self.params.proxy_lr_mult,
             "weight_decay": 0.0}
        )
        return groups
