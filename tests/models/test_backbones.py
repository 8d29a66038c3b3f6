import pytest
import torch

from deepmetric.models.backbones import BackboneConfig, build_backbone


def test_resnet18_stages_and_pooling():
    bb = build_backbone(BackboneConfig(name="resnet18", pool="max"))
    x = torch.randn(2, 3, 64, 64)
    stages = bb.forward_stages(x)
    assert [s.shape[1] for s in stages] == bb.stage_dims == [64, 128, 256, 512]
    torch.testing.assert_close(bb(x), stages[-1].amax(dim=(2, 3)))


def test_frozen_bn_stays_frozen_in_train_mode():
    bb = build_backbone(BackboneConfig(name="resnet18", frozen_bn=True)).train()
    bn = bb.stem[1]
    before = bn.running_mean.clone()
    bb(torch.randn(4, 3, 32, 32))
    assert not bn.training and not bn.weight.requires_grad
    torch.testing.assert_close(bn.running_mean, before)


def test_frozen_bn_stats_fixes_the_statistics_and_trains_the_affine_parameters():
    """`frozen_bn: stats` (the D&C and Sharing authors' code): BatchNorm in eval mode, γ/β still learn."""
    bb = build_backbone(BackboneConfig(name="resnet18", frozen_bn="stats")).train()
    bn = bb.stem[1]
    before, weight = bn.running_mean.clone(), bn.weight.detach().clone()
    opt = torch.optim.SGD(bb.parameters(), lr=0.1)
    bb(torch.randn(4, 3, 32, 32)).square().mean().backward()
    opt.step()
    assert not bn.training and bn.weight.requires_grad
    torch.testing.assert_close(bn.running_mean, before)
    assert not torch.equal(bn.weight, weight)
    with pytest.raises(ValueError, match="frozen_bn"):
        BackboneConfig(name="resnet18", frozen_bn="yes please")


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


def test_efficientnet_lite0_loads_packaged_imagenet_weights_offline():
    a = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True)).eval()
    b = build_backbone(BackboneConfig(name="efficientnet_lite0", pretrained=True)).eval()
    torch.testing.assert_close(a.stem[0].weight, b.stem[0].weight)  # deterministic: weights, not random init
    x = torch.randn(1, 3, 64, 64)
    assert a(x).shape == (1, a.feature_dim) == (1, 1280)
    assert [s.shape[1] for s in a.forward_stages(x)] == a.stage_dims
