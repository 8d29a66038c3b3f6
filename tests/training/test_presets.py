"""Paper presets (conf/presets/<setting>/<dataset>.yml): each validates, is documented, and trains one step on a tiny
replica of its dataset's layout with a tiny stand-in backbone of its family (ResNet-18 from scratch at 32 px; timm's
test ViT for the ViT presets), so none rots."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from deepmetric.data.config import ParamsError
from deepmetric.data.manifest import build_manifest
from deepmetric.data.readers import read_dataset
from deepmetric.data.transforms import InputSpec
from deepmetric.methods import METHODS
from deepmetric.params import ParamsCheckHook, validate_params
from deepmetric.training.config import parse_train
from deepmetric.training.loop import fit
from deepmetric.training.presets import DATASETS, available, load_preset, resolve
from tests.data import layouts

ROOT = Path(__file__).resolve().parents[2]
ALL_PRESETS = available(ROOT)
PRESETS = [p for p in ALL_PRESETS if p.split("/")[0] in METHODS]  # a method's paper setting
VIT_PRESETS = [p for p in ALL_PRESETS if p.split("/")[0] == "vit_s16_dino"]  # a backbone's setting
SEED_METHODS = METHODS.names(kind="seed")
# Stand-ins for what a unit test cannot have: ImageNet weights, 227 px images, a paper's epochs.
TINY = {"train.epochs": 1, "train.steps_per_epoch": 1, "train.backbone.name": "resnet18",
        "train.backbone.pretrained": False, "train.backbone.weights_path": None, "model.resize": 40,
        "model.crop": 32, "train.progress": False, "train.device": "cpu", "train.eval_batch_size": 64}
# The ViT presets' stand-in: timm's 6-block, 64-d test ViT from scratch (its position embedding at the 32-px grid).
TINY_VIT = {**TINY, "train.backbone.name": "timm/test_vit", "train.backbone.img_size": 32,
            "train.precision": "fp32"}


def _params(name: str, overrides: dict | None = None) -> dict:
    dataset = name.split("/")[1]
    tiny = TINY_VIT if name in VIT_PRESETS else TINY
    return {"preset": {"name": name, "overrides": overrides if overrides is not None else tiny},
            "data": {"dataset": dataset, "root": "unused"}}


def test_every_seed_method_has_a_preset_for_every_dataset():
    assert PRESETS == sorted(f"{m}/{d}" for m in SEED_METHODS for d in DATASETS)
    # every other folder is a backbone's setting with a preset for every dataset
    assert sorted(set(ALL_PRESETS) - set(PRESETS)) == VIT_PRESETS == sorted(f"vit_s16_dino/{d}" for d in DATASETS)


def _documented(name: str, preset) -> None:
    """Its docs section names the published Recall@1 (or says it is unconfirmed) and what is not reproducible."""
    docs = (ROOT / "docs" / "methods" / "presets.md").read_text()
    section = " ".join(docs.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0].split())
    r1 = preset.expect.recall_at_1
    assert (f"{r1:.1f}" in section) if r1 is not None else ("unconfirmed" in section), name
    assert "Not reproducible here" in section


@pytest.mark.parametrize("name", VIT_PRESETS)
def test_vit_preset_is_valid_and_documented(name):
    preset = load_preset(name, ROOT)
    with pytest.raises(ParamsError, match=r"(?s)weights/dino_deitsmall16_pretrain\.pth.*is not a file"):
        resolve(_params(name, {}), ROOT)
    cfg, _ = parse_train(resolve(_params(name), ROOT)["train"])
    assert cfg.method == preset.method and preset.setting == "vit_s16_dino" and cfg.backbone.name == "timm/test_vit"
    shipped = preset.train["backbone"]
    assert shipped["name"] == "timm/vit_small_patch16_224" and shipped["pool"] == "token" and shipped["pretrained"]
    assert preset.train["embedding_dim"] is None and preset.model["crop"] % 16 == 0
    _documented(name, preset)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_is_valid_and_documented(name):
    preset = load_preset(name, ROOT)
    # as shipped (pointing at the local ImageNet weights file) it only lacks that file
    with pytest.raises(ParamsError, match=r"(?s)weights/resnet50-0676ba61\.pth.*is not a file"):
        resolve(_params(name, {}), ROOT)
    resolved = resolve(_params(name), ROOT)
    cfg, _ = parse_train(resolved["train"])
    assert cfg.method == preset.method and cfg.epochs == 1
    assert preset.train["backbone"]["pretrained"] and preset.train["backbone"]["name"] == "resnet50"
    # its docs section names the file and the published Recall@1 (or says it is unconfirmed)
    docs = (ROOT / "docs" / "methods" / "presets.md").read_text()
    section = " ".join(docs.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0].split())
    r1 = preset.expect.recall_at_1
    assert (f"{r1:.1f}" in section) if r1 is not None else ("unconfirmed" in section), name
    assert "Not reproducible here" in section


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [({"train.optimizer.lr": -1}, r"preset 'sharing/cub'.*train\.optimizer\.lr"),
     ({"train.methods.sharing.disw": 3}, r"train\.methods\.sharing\.disw: unknown parameter"),
     ({"trian.epochs": 1}, r"'trian\.epochs' must start with 'train\.' or 'model\.'"),
     ({"model.crop": 512}, r"crop \(512\) must not exceed resize")],
)
def test_bad_overrides_are_named(overrides, needle):
    with pytest.raises(ParamsError, match="(?s)" + needle):
        resolve(_params("sharing/cub", {**TINY, **overrides}), ROOT)


def test_unknown_preset_wrong_dataset_and_bad_file_are_named(tmp_path):
    with pytest.raises(ParamsError, match=r"no file .*available presets: \['divide_conquer/cars196'"):
        resolve({"preset": {"name": "sharing/cifar"}}, ROOT)
    with pytest.raises(ParamsError, match=r"'cub' setting but data.dataset is 'glyphs'"):
        resolve({"preset": {"name": "sharing/cub", "overrides": TINY}, "data": {"dataset": "glyphs"}}, ROOT)
    bad = tmp_path / "conf" / "presets" / "sharing"
    bad.mkdir(parents=True)
    doc = yaml.safe_load((ROOT / "conf/presets/sharing/cub.yml").read_text())
    doc["epochs"] = 3  # a key at the wrong level
    (bad / "cub.yml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ParamsError, match=r"(?s)preset sharing/cub .*epochs: unknown parameter"):
        load_preset("sharing/cub", tmp_path)
    # validate_params reports the preset's problem with every other block's
    with pytest.raises(ParamsError, match=r"preset\.name = 'nope/cub'"):
        validate_params({"preset": {"name": "nope/cub"}}, ROOT)


def test_the_kedro_hook_puts_the_preset_into_the_catalog():
    from kedro.io import DataCatalog

    params = {"train": {"method": "margin", "epochs": 10}, "model": {"resize": 64, "crop": 64},
              **_params("intra_batch/sop")}
    catalog = DataCatalog()
    for key, value in {"parameters": params, "params:train": params["train"], "params:model": params["model"],
                       "params:preset": params["preset"]}.items():
        catalog[key] = value
    hook = ParamsCheckHook()
    hook.root = ROOT
    hook.after_catalog_created(catalog, {"parameters": params})
    train = catalog.load("params:train")
    assert train["method"] == "intra_batch" and train["batch"] == {"classes_per_batch": 15, "samples_per_class": 6}
    assert catalog.load("params:train.optimizer")["name"] == "radam"
    assert catalog.load("params:model") == {**load_preset("intra_batch/sop", ROOT).model, "resize": 40, "crop": 32}
    # without a preset nothing changes
    plain = {"train": {"method": "margin"}, "preset": {"name": None, "overrides": {}}}
    catalog["params:train"] = plain["train"]
    hook.after_catalog_created(catalog, {"parameters": plain})
    assert catalog.load("params:train") == {"method": "margin"}


def _replica(dataset: str, root: Path, classes: int, per_class: int) -> Path:
    # enough training classes for the preset's batch composition (the zero-shot split keeps half for test)
    if dataset == "cub":
        return layouts.make_cub(root, num_classes=2 * classes, per_class=per_class, appledouble=False)
    if dataset == "cars196":
        return layouts.make_cars(root, num_classes=2 * classes, per_class=per_class)
    if dataset == "sop":
        return layouts.make_sop(root, train_classes=classes, test_classes=2, per_class=per_class)
    return layouts.make_inshop(root, train_items=classes, test_items=2)


@pytest.mark.parametrize("name", PRESETS + VIT_PRESETS)
def test_preset_trains_one_step_on_a_tiny_replica_of_its_layout(name, tmp_path):
    torch.set_num_threads(1)
    resolved = resolve(_params(name), ROOT)
    cfg, params = parse_train(resolved["train"])
    spec = InputSpec(**resolved["model"])
    dataset = name.split("/")[1]
    # + 2 classes for the validation slice
    root = _replica(dataset, tmp_path / dataset, cfg.batch.classes_per_batch + 2, max(2, cfg.batch.samples_per_class))
    manifest = build_manifest(read_dataset(dataset, root, {"val_classes": 2}), root, workers=1)
    manifest = manifest[0] if isinstance(manifest, tuple) else manifest
    result = fit(manifest, str(root), cfg, params, spec)
    row = result.log[0]
    assert row["epoch"] == 1 and torch.isfinite(torch.tensor(row["loss"]))
    assert result.payload["train"]["method"] == load_preset(name, ROOT).method
    assert re.fullmatch(r"\d+", str(result.payload["best_epoch"]))
