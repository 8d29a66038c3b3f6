"""Backbones: a CNN trunk split into a stem and stages (`base.Backbone`), chosen by `train.backbone.name`.

One module per family registers its names in `BACKBONES` (`base.py`): `resnet.py` (torchvision ResNet-18/50, ImageNet
weights from a local file), `efficientnet.py` (EfficientNet-Lite0, ImageNet weights from its package). Importing this
package imports every module in it; `build_backbone` looks the name up. A family may claim every name that starts
with a prefix (``BACKBONES.register("timm/", prefix=True, …)``). Nothing is ever downloaded.
"""

from deepmetric.models.backbones.base import BACKBONES, Backbone, BackboneConfig, build_backbone

BACKBONES.discover(__name__)

__all__ = ["BACKBONES", "Backbone", "BackboneConfig", "build_backbone"]
