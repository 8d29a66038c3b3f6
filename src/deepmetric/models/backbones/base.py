"""What every backbone family shares: the `train.backbone` config, pooling, the `Backbone` module (stem + stages),
and the registry of names (`BACKBONES`) that `build_backbone` looks a name up in.

A family module registers a builder ``(BackboneConfig) -> Backbone`` under each name it serves, with metadata
``weights_file``: what `weights_path` must hold for ``pretrained: true`` (``None``: the weights ship with a package),
and ``doc``: its row in docs/training.md ("Backbones"). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from torch import nn

from deepmetric.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from deepmetric.registry import Registry


class BackboneConfig(BaseModel):
    """`train.backbone` parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = "resnet18"
    # ImageNet weights: a family that reads them from a file (ResNets: a local torchvision state dict) needs
    # `weights_path`; EfficientNet-Lite0 takes them from its package.
    pretrained: bool = False
    weights_path: str | None = None
    # null = the method's choice (its paper's), else avg pooling / trainable BatchNorm.
    pool: Literal["avg", "max", "avgmax"] | None = None
    # BatchNorm of the trunk: false = trains as usual; "stats" = running statistics fixed (eval mode), affine γ/β
    # still learn (the D&C and Sharing authors' code); true = statistics and γ/β both fixed.
    frozen_bn: bool | Literal["stats"] | None = None

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return BACKBONES.check(name)

    @model_validator(mode="after")
    def _weights(self) -> BackboneConfig:
        weights_file = BACKBONES.meta(self.name)["weights_file"]
        if self.pretrained and weights_file and not self.weights_path:
            raise ValueError(
                f"backbone {self.name!r} with pretrained=true needs weights_path: {weights_file} "
                "(deepmetric never downloads weights). Set pretrained=false to train from scratch."
            )
        if self.weights_path and not Path(self.weights_path).is_file():
            raise ValueError(f"backbone weights_path {self.weights_path!r} is not a file")
        return self


class _Pool(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        if self.kind == "max":
            return x.amax(dim=(2, 3))
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


class Backbone(nn.Module):
    """A CNN trunk split into a stem and stages.

    ``forward(x)`` → pooled features ``[N, feature_dim]``; ``forward_stages(x)`` → the feature maps of every
    stage (for multi-level heads); ``stage_dims`` gives their channel counts. ``mean``/``std`` are the input
    normalisation the weights expect.
    """

    def __init__(self, stem: nn.Module, stages: list[nn.Module], stage_dims: list[int], cfg: BackboneConfig):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.stage_dims = list(stage_dims)
        self.feature_dim = stage_dims[-1]
        self.pool = _Pool(cfg.pool or "avg")
        self.cfg = cfg
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        if cfg.frozen_bn is True:  # "stats" keeps γ/β trainable
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.cfg.frozen_bn:
            # Frozen BatchNorm (true or "stats"): running statistics stay fixed in training mode too.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # Set by `deepmetric.training.precision.Precision.prepare` during training: autocast and memory format of
    # the trunk. Not part of the state dict; a rebuilt model (evaluation, export) runs plain float32.
    runtime = None

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        rt = self.runtime
        if rt is None:
            return self._stages(x)
        with rt.autocast():
            maps = self._stages(rt.input(x))
        return [m.float() for m in maps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rt = self.runtime
        if rt is None:
            return self.pool(self._stages(x)[-1])
        with rt.autocast():
            out = self.pool(self._stages(rt.input(x))[-1])
        return out.float()


# name → builder ``(BackboneConfig) -> Backbone``; metadata ``weights_file`` and ``doc`` (see the module docstring).
BACKBONES: Registry[Callable[[BackboneConfig], Backbone]] = Registry("backbone", required=("weights_file", "doc"))


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """The backbone `cfg.name` names, built by its family."""
    return BACKBONES.lookup(cfg.name, what="train.backbone.name")(cfg)
