"""The EfficientNet-Lite0 family (deepmetric.models.backbones.efficientnet): ImageNet weights from its package."""

import torch

from deepmetric.models.backbones import BackboneConfig, build_backbone


def test_efficientnet_lite0_loads_packaged_imagenet_weights_offline():
    a = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True)).eval()
    b = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True)).eval()
    torch.testing.assert_close(a.stem[0].weight, b.stem[0].weight)  # deterministic: weights, not random init
    x = torch.randn(1, 3, 64, 64)
    assert a(x).shape == (1, a.feature_dim) == (1, 1280)
    assert [s.shape[1] for s in a.forward_stages(x)] == a.stage_dims


def test_pretrained_needs_no_weights_file():
    cfg = BackboneConfig(name="efficientnet_lite0", pretrained=True)
    assert cfg.weights_path is None
    torch.manual_seed(0)
    scratch = build_backbone(BackboneConfig(name="efficientnet_lite0")).stem[0].weight
    assert not torch.equal(build_backbone(cfg).stem[0].weight, scratch)
