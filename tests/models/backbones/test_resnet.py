"""The ResNet family (deepmetric.models.backbones.resnet): torchvision ResNet-18/50 split into stem + 4 stages,
ImageNet weights from a local state dict."""

import pytest
import torch

from deepmetric.models.backbones import BACKBONES, BackboneConfig, build_backbone


def test_resnet18_stages_and_pooling():
    bb = build_backbone(BackboneConfig(name="resnet18", pool="max"))
    x = torch.randn(2, 3, 64, 64)
    stages = bb.forward_stages(x)
    assert [s.shape[1] for s in stages] == bb.stage_dims == [64, 128, 256, 512]
    torch.testing.assert_close(bb(x), stages[-1].amax(dim=(2, 3)))


def test_resnet50_stage_widths_come_from_its_bottleneck_blocks():
    assert build_backbone(BackboneConfig(name="resnet50")).stage_dims == [256, 512, 1024, 2048]


def test_resnet_weights_from_local_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    bb = build_backbone(BackboneConfig(name="resnet18", pretrained=True, weights_path=str(path)))
    torch.testing.assert_close(bb.stem[0].weight, ref.conv1.weight)
    torch.save({"not": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision resnet18 state dict"):
        build_backbone(BackboneConfig(name="resnet18", pretrained=True, weights_path=str(path)))


def test_pretrained_resnet_needs_its_weights_file():
    assert [BACKBONES.meta(n)["weights_file"] for n in ("resnet18", "resnet50")] == ["a local torchvision state dict"] * 2
    with pytest.raises(ValueError, match="'resnet50' with pretrained=true needs weights_path: a local torchvision"):
        BackboneConfig(name="resnet50", pretrained=True)
