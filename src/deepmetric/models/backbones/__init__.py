"""Backbones behind one interface (`base.Backbone`: pooled features, stage maps, layers), chosen by
`train.backbone.name`.

One module per family registers its names in `BACKBONES` (`base.py`): `resnet.py` (torchvision ResNet-18/50, ImageNet
weights from a local file) and `efficientnet.py` (EfficientNet-Lite0, ImageNet weights from its package) are CNN trunks
(`base.StagedBackbone`: stem + stages); `timm.py` claims every ``timm/<name>`` (any timm model — ViT, ConvNeXt, … —
weights from a local safetensors or torch checkpoint). Importing this package imports every module in it;
`build_backbone` looks the name up. Nothing is ever downloaded.
"""

from deepmetric.models.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneConfig,
    BackboneInfo,
    StagedBackbone,
    build_backbone,
    check_input_size,
    describe,
)

BACKBONES.discover(__name__)

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "BackboneInfo", "StagedBackbone", "build_backbone",
           "check_input_size", "describe"]
