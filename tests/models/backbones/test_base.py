"""What every backbone shares (deepmetric.models.backbones.base): the config, pooling, frozen BatchNorm, and the
registry of names — each registered name is built by its family and documented in docs/training.md."""

from pathlib import Path

import pytest
import torch

from deepmetric.models.backbones import BACKBONES, BackboneConfig, build_backbone
from deepmetric.registry import UnknownNameError
from deepmetric.training.config import ParameterError, parse_train

ROOT = Path(__file__).resolve().parents[3]


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


@pytest.mark.parametrize("pool", ["avg", "max", "avgmax"])
def test_pooling_of_the_last_stage(pool):
    bb = build_backbone(BackboneConfig(name="resnet18", pool=pool)).eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = bb.forward_stages(x)[-1]
    want = {"avg": fmap.mean(dim=(2, 3)), "max": fmap.amax(dim=(2, 3))}
    want["avgmax"] = want["avg"] + want["max"]
    torch.testing.assert_close(bb(x), want[pool])


def test_a_misspelt_backbone_is_named_with_the_choices():
    with pytest.raises(ParameterError, match=r"train\.backbone\.name = 'resnet19': .*unknown backbone 'resnet19'; "
                                             r"did you mean 'resnet18' or 'resnet50'\? \(choose one of: "):
        parse_train({"backbone": {"name": "resnet19"}})
    with pytest.raises(UnknownNameError, match=r"unknown train\.backbone\.name 'vgg16'"):
        build_backbone(BackboneConfig.model_construct(name="vgg16"))


def _doc_rows() -> dict[str, list[str]]:
    text = (ROOT / "docs" / "training.md").read_text().split("## Backbones", 1)[1].split("\n## ", 1)[0]
    body = text.split("|---", 1)[1].splitlines()[1:]  # the table's rows, below its header
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in body if ln.startswith("| `")]
    return {r[0].strip("`"): r for r in rows}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_is_built_by_its_family_and_has_its_doc_row(name):
    entry = BACKBONES.entry(name)
    assert entry.module.startswith("deepmetric.models.backbones.") and entry.meta["doc"] == "docs/training.md"
    row = _doc_rows()[name]  # | name | family module | ImageNet weights | pooled features |
    assert row[1].startswith(f"`{entry.module.rsplit('.', 1)[1]}.py`")
    assert ("weights_path" in row[2]) == bool(entry.meta["weights_file"])
    if not entry.prefix:
        bb = build_backbone(BackboneConfig(name=name)).eval()
        assert int(row[3]) == bb.feature_dim == bb.stage_dims[-1]
        assert bb(torch.randn(1, 3, 32, 32)).shape == (1, bb.feature_dim)


def test_every_documented_backbone_is_registered():
    assert sorted(_doc_rows()) == BACKBONES.names()
