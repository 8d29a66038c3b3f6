"""torchvision ResNets (`resnet18`, `resnet50`): stem = conv1 → bn1 → relu → maxpool, stages = layer1…layer4.

ImageNet weights come from a local file (`weights_path`, a torchvision state dict such as ``resnet50-11ad3fa6.pth``);
never downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.models.backbones.base import BACKBONES, BackboneConfig, StagedBackbone

NAMES = ("resnet18", "resnet50")


def build(cfg: BackboneConfig) -> StagedBackbone:
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
    # a stage's width: its last block's last conv (BasicBlock: conv2; Bottleneck: conv3)
    dims = [getattr(s[-1], "conv3", s[-1].conv2).out_channels for s in stages]
    return StagedBackbone(stem, stages, dims, cfg)


for _name in NAMES:
    BACKBONES.add(_name, build, weights_file="a local torchvision state dict", doc="docs/training.md")
