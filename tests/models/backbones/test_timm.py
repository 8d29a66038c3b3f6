"""The timm family (deepmetric.models.backbones.timm): any timm model behind the Backbone interface, its weights from a
local file in each accepted layout (loading back to identical outputs), the fine-tuning knobs, and every bad input of
issue 20 refused with a message naming it. Models are timm's own tiny test models (`test_vit`: patch 16, 64-d,
6 blocks; `test_convnext`), random weights."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest
import torch

from deepmetric.data.config import ParamsError
from deepmetric.methods import METHODS
from deepmetric.models.backbones import BackboneConfig, build_backbone, describe
from deepmetric.models.backbones.base import BackboneError
from deepmetric.models.backbones.timm import WeightsError, read_weights
from deepmetric.params import validate_params
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.loop import fit
from deepmetric.training.model_io import build_method
from tests.fixtures import check_trained_model, make_bars, one_torch_thread, save_weights, timm_source

VIT = "timm/test_vit"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with one_torch_thread():
        yield


def _vit(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(BackboneConfig(name=VIT, **kw)).eval()


def test_a_vit_pools_its_class_token_and_gives_its_blocks_as_stage_maps():
    bb = _vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = bb.net.forward_features(x)  # [N, 1 + 2×2, 64], final norm applied
        pooled, maps = bb.forward_with_stages(x)
        torch.testing.assert_close(bb(x), tokens[:, 0])
        torch.testing.assert_close(pooled, tokens[:, 0])
        assert [m.shape for m in bb.forward_stages(x)] == [torch.Size([2, 64, 2, 2])] * 6
    assert bb.feature_dim == 64 and bb.stage_dims == [64] * 6 and len(maps) == 6
    assert describe(VIT).transformer and describe(VIT).patch == 16 and describe(VIT).pools[0] == "token"


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_vit_pooling_over_patch_tokens_keeps_the_final_norm(pool):
    bb = _vit(pool=pool)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        patches = bb.net.forward_features(x)[:, 1:]
        want = patches.mean(1) if pool == "avg" else patches.amax(1)
        torch.testing.assert_close(bb(x), want)


def test_a_method_pooling_choice_applies_to_cnns_not_to_a_vit():
    # ranked_list's paper pools a CNN map with avg; on a ViT the class token stays, unless the user says otherwise
    assert parse_train({"method": "intra_batch", "backbone": {"name": VIT}})[0].backbone.pool is None
    assert parse_train({"method": "intra_batch", "backbone": {"name": "timm/test_convnext"}})[0].backbone.pool == "max"
    assert parse_train({"method": "intra_batch", "backbone": {"name": VIT, "pool": "avg"}})[0].backbone.pool == "avg"
    with pytest.raises(ParamsError, match=r"pool 'gem' does not apply to backbone 'timm/test_vit'; it takes token, "
                                          r"avg, max, avgmax"):
        parse_train({"backbone": {"name": VIT, "pool": "gem"}})


def test_gem_pooling_of_a_cnn_trunk():
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="resnet18", pool="gem")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fmap = bb.forward_stages(x)[-1]
        torch.testing.assert_close(bb(x), fmap.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3))
    assert bb.pool.p.requires_grad


# --- weights from a local file --------------------------------------------------------------------------------------

LAYOUTS = ["safetensors", "torch", "state_dict", "model", "ddp", "dino_teacher", "with_classifier", "dinov2",
           "open_clip"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_weights_saved_from_a_timm_model_load_back_to_identical_outputs(layout, tmp_path):
    src = timm_source("test_vit", num_classes=10 if layout == "with_classifier" else 0)
    path = save_weights(src, tmp_path, layout)
    bb = build_backbone(BackboneConfig(name=VIT, pretrained=True, weights_path=str(path))).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = src.forward_head(src.forward_features(x), pre_logits=True)
        assert torch.equal(bb(x), want)
    assert BackboneConfig(name=VIT, pretrained=True, weights_path=str(path)).weights_sha256 == \
        bb.provenance()["weights_sha256"]


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_a_torchscript_archive_gives_its_parameters(tmp_path):
    """OpenAI's CLIP files are TorchScript archives: their state dict is read (timm's filter converts the layout)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(module), str(path))
    got = read_weights(path)
    assert sorted(got) == sorted(module.state_dict()) and all(torch.equal(got[k], v) for k, v in module.state_dict().items())


def test_position_embedding_is_resampled_to_the_backbone_grid(tmp_path):
    from timm.layers import resample_abs_pos_embed

    src = timm_source("test_vit")  # 160 px: a 10 × 10 grid
    path = save_weights(src, tmp_path, "safetensors")
    bb = build_backbone(BackboneConfig(name=VIT, pretrained=True, weights_path=str(path), img_size=32))
    want = resample_abs_pos_embed(src.pos_embed.detach(), (2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(bb.net.pos_embed.detach(), want)
    # without img_size the grid stays the checkpoint's and other input sizes are resampled on the fly
    on_the_fly = build_backbone(BackboneConfig(name=VIT, pretrained=True, weights_path=str(path))).eval()
    with torch.no_grad():
        assert on_the_fly(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_a_checkpoint_of_another_size_names_the_first_layer_that_differs(tmp_path):
    path = save_weights(timm_source("test_vit", embed_dim=96, num_heads=2), tmp_path, "safetensors")
    with pytest.raises(WeightsError, match=r"does not fit timm model 'test_vit': the first layer that differs is "
                                           r"'cls_token', \(1, 1, 96\) in the file, \(1, 1, 64\) in the model"):
        build_backbone(BackboneConfig(name=VIT, pretrained=True, weights_path=str(path)))


def test_a_checkpoint_of_another_architecture_lists_missing_and_unexpected_keys(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(WeightsError, match=r"(?s)does not fit timm model 'test_vit': \d+ missing key\(s\) "
                                           r"\['cls_token', 'pos_embed', .*\d+ unexpected key\(s\) \['conv1\.weight'"):
        build_backbone(BackboneConfig(name=VIT, pretrained=True, weights_path=str(path)))


@pytest.mark.parametrize("cut", ["safetensors", "torch"])
def test_a_truncated_or_corrupt_file_is_refused(cut, tmp_path):
    path = save_weights(timm_source("test_vit"), tmp_path, cut)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    kind = "safetensors file" if cut == "safetensors" else "safetensors or torch checkpoint"
    with pytest.raises(WeightsError, match=rf"weights_path '.*': not a readable {kind} \(truncated or corrupt\?\)"):
        read_weights(path)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(WeightsError, match=r"not a readable safetensors or torch checkpoint"):
        read_weights(junk)


def test_a_bad_weights_file_is_a_user_error_stopping_training_before_anything_is_written(bars, tmp_path):
    from deepmetric.errors import user_error

    root, manifest = bars
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cfg, params = parse_train({"backbone": {"name": VIT, "pretrained": True, "weights_path": str(bad)},
                               "epochs": 1, "steps_per_epoch": 1, "progress": False, "num_workers": 0})
    with pytest.raises(WeightsError) as caught:
        fit(manifest, root, cfg, params, InputConfig(resize=32, crop=32), checkpoint_dir=tmp_path / "ckpt")
    kind, message = user_error(caught.value)  # `kedro run` prints "error: <message>" and exits 1, no traceback
    assert kind == "WeightsError" and "not a readable safetensors file" in message and str(bad) in message
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def test_wrappers_are_accepted_only_where_unambiguous(tmp_path):
    state = timm_source("test_vit").state_dict()
    both = tmp_path / "both.pth"
    torch.save({"model": state, "state_dict": state, "epoch": 3}, both)
    with pytest.raises(WeightsError, match=re.escape("several wrappers ['state_dict', 'model']; the file's top-level "
                                                     "keys: ['epoch', 'model', 'state_dict']")):
        read_weights(both)
    other = tmp_path / "other.pth"
    torch.save({"weights": state, "epoch": 3}, other)
    with pytest.raises(WeightsError, match=re.escape("no state dict under ['state_dict', 'model', 'teacher']; the "
                                                     "file's top-level keys: ['epoch', 'weights']")):
        read_weights(other)
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": state, "where": pathlib.PurePosixPath("runs/1")}, pickled)
    with pytest.raises(WeightsError, match=r"holds Python objects besides tensors \(pathlib.PurePosixPath\)"):
        read_weights(pickled)


def test_an_unknown_timm_name_suggests_close_ones():
    with pytest.raises(ParamsError, match=r"unknown timm model 'vit_smal_patch16_224'; did you mean "
                                          r"'timm/vit_small_patch16_224'"):
        parse_train({"backbone": {"name": "timm/vit_smal_patch16_224"}})


def test_an_input_size_the_patch_does_not_divide_is_refused():
    with pytest.raises(ParamsError, match=r"model.crop = 40 is not a multiple of the patch size 16 of backbone "
                                          r"'timm/test_vit': use 32 or 48"):
        validate_params({"train": {"backbone": {"name": VIT}}, "model": {"resize": 48, "crop": 40}})
    validate_params({"train": {"backbone": {"name": VIT}}, "model": {"resize": 48, "crop": 48}})
    with pytest.raises(ParamsError, match=r"train.backbone.img_size = 20 is not a multiple of the patch size 16"):
        parse_train({"backbone": {"name": VIT, "img_size": 20}})
    with pytest.raises(BackboneError, match=r"the input size \(model.crop\) = 40 is not a multiple of the patch size"):
        _vit()(torch.randn(1, 3, 40, 40))


def test_timm_options_are_refused_for_families_without_them():
    with pytest.raises(ParamsError, match=r"drop_path_rate, img_size: not an option of backbone 'resnet18'"):
        parse_train({"backbone": {"name": "resnet18", "drop_path_rate": 0.1, "img_size": 64}})


# --- fine-tuning knobs ---------------------------------------------------------------------------------------------

def test_freezing_the_stem_and_the_first_blocks():
    bb = _vit(freeze_blocks=2)
    frozen = {n for n, p in bb.named_parameters() if not p.requires_grad}
    assert {"net.cls_token", "net.pos_embed", "net.patch_embed.proj.weight"} <= frozen
    assert all(re.match(r"net\.(cls_token|pos_embed|patch_embed\.|blocks\.[01]\.)", n) for n in frozen)
    assert any(n.startswith("net.blocks.1.") for n in frozen) and not any(n.startswith("net.blocks.2.") for n in frozen)
    stem_only = {n for n, p in _vit(freeze_stem=True).named_parameters() if not p.requires_grad}
    assert stem_only == {"net.cls_token", "net.pos_embed", "net.patch_embed.proj.weight", "net.patch_embed.proj.bias"}
    # a CNN trunk counts its stem and stages the same way
    cnn = build_backbone(BackboneConfig(name="resnet18", freeze_blocks=1))
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in cnn.named_parameters() if not p.requires_grad}
    assert frozen == {"stem.0", "stem.1", "stages.0"}


def test_layer_wise_lr_decay_groups_and_weight_decay_exclusions():
    bb = _vit(layer_decay=0.5)
    groups = {g["name"]: g for g in bb.param_groups(1.0, 0.05)}
    names = {id(p): n for n, p in bb.named_parameters()}
    where = {names[id(p)]: g for g in groups.values() for p in g["params"]}
    assert sorted(where) == sorted(names.values())  # every parameter exactly once
    # timm's grouping: 7 layers, the stem and 6 blocks (the final norm with the last); layer i gets 0.5^(6-i)
    assert where["net.patch_embed.proj.weight"]["lr"] == where["net.cls_token"]["lr"] == 0.5 ** 6
    assert where["net.blocks.0.attn.qkv.weight"]["lr"] == 0.5 ** 5
    assert where["net.blocks.4.mlp.fc1.weight"]["lr"] == 0.5
    assert where["net.blocks.5.mlp.fc1.weight"]["lr"] == where["net.norm.weight"]["lr"] == 1.0
    assert where["net.pos_embed"]["weight_decay"] == where["net.blocks.0.norm1.bias"]["weight_decay"] == 0.0
    assert where["net.blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert all(n.startswith("backbone@layer") for n in groups)
    # without decay a ViT still keeps norms, biases and embeddings out of weight decay; a CNN keeps one group
    assert sorted(g["name"] for g in _vit().param_groups(1.0, 0.05)) == ["backbone@decay", "backbone@no_decay"]
    cnn = build_backbone(BackboneConfig(name="resnet18"))
    assert [g["name"] for g in cnn.param_groups(1.0, 0.05)] == ["backbone"]
    cnn_groups = build_backbone(BackboneConfig(name="resnet18", layer_decay=0.5)).param_groups(1.0, 0.0)
    assert sorted(g["lr"] for g in cnn_groups) == [0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5, 1.0]  # stem + 4 stages


def test_group_lr_and_lr_scales_address_every_part_of_the_backbone():
    from deepmetric.training.loop import make_optimizer

    cfg, params = parse_train({"backbone": {"name": VIT, "layer_decay": 0.5},
                               "optimizer": {"group_lr": {"backbone": 0.01}}})
    opt = make_optimizer(build_method(cfg, params, 4), cfg)
    lrs = sorted(g["lr"] for g in opt.param_groups if g["name"].startswith("backbone@"))
    assert lrs[-1] == pytest.approx(0.01) and lrs[0] == pytest.approx(0.01 * 0.5 ** 6)
    # a method's lr scale on "backbone" (D&C's frozen epochs) reaches every part, and only them
    from deepmetric.training.context import LoopContext

    ctx = LoopContext(method=None, optimizer=opt, device=torch.device("cpu"), labels=np.zeros(1), seed=0, epochs=1,
                      loader=None, eval_images=None, spec=None, eval_batch_size=1, precision=None,
                      base_lrs={g["name"]: g["lr"] for g in opt.param_groups})
    ctx.set_lr_scale("backbone", 0.0)
    assert {g["name"].split("@")[0]: g["lr"] for g in opt.param_groups if g["lr"] == 0} == {"backbone": 0.0}
    assert all(g["lr"] == 0 for g in opt.param_groups if g["name"].startswith("backbone@"))
    assert next(g["lr"] for g in opt.param_groups if g["name"] == "head") == pytest.approx(1e-3)
    with pytest.raises(KeyError, match=r"no optimiser group named 'backbone@layer0_decay'; groups: \['backbone', "):
        ctx.set_lr_scale("backbone@layer0_decay", 0.0)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for on in (False, True):
        for name in (VIT, "resnet18"):
            torch.manual_seed(0)
            bb = build_backbone(BackboneConfig(name=name, grad_checkpointing=on)).train()
            bb(x).square().sum().backward()
            grads.append(torch.cat([p.grad.flatten() for p in bb.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[2])
    torch.testing.assert_close(grads[1], grads[3])


def test_drop_path_reaches_the_blocks():
    bb = _vit(drop_path_rate=0.2)
    assert bb.net.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)


def test_no_embedding_head_uses_the_backbone_width():
    cfg, params = parse_train({"embedding_dim": None, "backbone": {"name": VIT}})
    method = build_method(cfg, params, 4).eval()
    assert isinstance(method.head, torch.nn.Identity) and method.test_embedding_dim == 64
    assert {g["name"]: g for g in method.param_groups(1e-3, 0.0)}["head"]["params"] == []  # dropped by the loop
    with torch.no_grad():
        assert method.embed(torch.randn(2, 3, 32, 32)).shape == (2, 64)


# --- every method on a ViT, through the real loop -------------------------------------------------------------------

@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    return str(root), make_bars(root, lambda c: "train" if c < 6 else "test", num_classes=10, size=32)


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_a_step_on_a_vit(bars, method):
    """Intra-Batch's MPN, D&C's clusters and masks (its backbone lr scale on every layer group), Sharing's two heads,
    Ranked List's multi-level heads on the ViT's blocks: the same interface as on a CNN."""
    root, manifest = bars
    blocks = {"divide_conquer": {"num_clusters": 2, "kmeans_niter": 5, "kmeans_nredo": 1},
              "ranked_list": {"multi_level": True, "multi_level_stages": [1, 3]}}
    cfg, params = parse_train({
        "method": method, "epochs": 1, "steps_per_epoch": 1, "embedding_dim": 16, "progress": False, "device": "cpu",
        "num_workers": 0, "batch": {"classes_per_batch": 3, "samples_per_class": 2}, "eval_batch_size": 32,
        "backbone": {"name": VIT, "img_size": 32, "layer_decay": 0.75, "drop_path_rate": 0.1},
        "methods": {method: blocks.get(method, {})},
    })
    res = fit(manifest, root, cfg, params, InputConfig(resize=32, crop=32))
    assert np.isfinite(res.log[0]["loss"])
    check_trained_model(res.payload, 32)
