"""Paper presets: one file per (setting, dataset) under ``conf/presets/<setting>/<dataset>.yml`` holding a paper's
full training setting (the `train` and `model` blocks), selected with one parameter. A setting is a method (its
paper's setting: ``intra_batch``) or a backbone's (``vit_s16_dino``: a DINO ViT-S/16 fine-tuned as its published
recipe; the file says which method in ``method`` and which setting in ``setting``):

    kedro run --params preset.name=intra_batch/cub                     # or, tracked by DVC:
    dvc exp run -S conf/base/parameters_preset.yml:preset.name=intra_batch/cub

When `preset.name` is set, the preset's `train` and `model` blocks replace `conf/base/parameters_train.yml`'s
wholesale (every Kedro node that reads `params:train` / `params:model` sees the preset's), then
`preset.overrides` (dotted keys such as ``train.epochs`` or ``train.backbone.weights_path``) apply on top. The
result is validated like every other block; an error names the preset and the key. `data.dataset` must be the
preset's dataset.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepmetric.data.config import ParamsError, parse_params
from deepmetric.data.contract import DATASETS as ALL_DATASETS

PRESET_DIR = Path("conf") / "presets"
# A preset is one paper's setting on one published benchmark dataset.
DATASETS = tuple(ALL_DATASETS.names(kind="benchmark"))


class PresetParams(BaseModel):
    """The `preset` parameter block (`conf/base/parameters_preset.yml`)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="<method>/<dataset>: conf/presets/<method>/<dataset>.yml; null: none")
    overrides: dict[str, Any] = Field(default_factory=dict, description="dotted train./model. keys on top")


class Expectation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recall_at_1: float | None = Field(None, ge=0, le=100, description="published Recall@1 (null: not confirmed)")
    source: str


class PresetFile(BaseModel):
    """One preset file. `train` and `model` are validated by their own blocks' models afterwards."""

    model_config = ConfigDict(extra="forbid")

    method: str
    setting: str | None = Field(None, description="the folder when it is not the method's name (a backbone setting)")
    dataset: str
    paper: str
    expect: Expectation
    train: dict[str, Any]
    model: dict[str, Any]

    @field_validator("dataset")
    @classmethod
    def _benchmark(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"must be one of the benchmark datasets {list(DATASETS)}, got {name!r}")
        return name


def available(root: str | Path = ".") -> list[str]:
    """Every preset name under ``<root>/conf/presets``."""
    base = Path(root) / PRESET_DIR
    return sorted(f"{p.parent.name}/{p.stem}" for p in base.glob("*/*.yml"))


def load_preset(name: str, root: str | Path = ".") -> PresetFile:
    """Read and validate the preset file `name` (``<setting>/<dataset>``) under ``<root>/conf/presets``."""
    setting, _, dataset = name.partition("/")
    path = Path(root) / PRESET_DIR / setting / f"{dataset}.yml"
    if not setting or not dataset or "/" in dataset or not path.is_file():
        raise ParamsError(f"preset.name = {name!r}: no file {path}; available presets: {available(root)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"preset {name!r}: {path} is not valid YAML: {exc}") from exc
    preset = parse_params(PresetFile, raw, f"preset {name} ({path})")
    if (preset.setting or preset.method, preset.dataset) != (setting, dataset):
        raise ParamsError(f"preset {name!r}: {path} declares {'setting' if preset.setting else 'method'} "
                          f"{preset.setting or preset.method!r}, dataset {preset.dataset!r}")
    if preset.train.get("method") != preset.method:
        raise ParamsError(f"preset {name!r}: train.method must be {preset.method!r}, got "
                          f"{preset.train.get('method')!r}")
    return preset


def _set_dotted(blocks: dict[str, Any], key: str, value: Any, name: str) -> None:
    head, *path = key.split(".")
    if head not in ("train", "model") or not path:
        raise ParamsError(f"preset.overrides: {key!r} must start with 'train.' or 'model.' (preset {name!r})")
    node = blocks[head]
    for part in path[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ParamsError(f"preset.overrides: {key!r}: {part!r} is not a block (preset {name!r})")
        node = nxt
    node[path[-1]] = value


def resolve(params: Mapping[str, Any], root: str | Path = ".") -> dict[str, Any]:
    """`params` with the selected preset applied (a copy); unchanged when there is no `preset` block or its
    name is null. The returned `train` and `model` blocks are validated, errors name the preset."""
    from deepmetric.data.transforms import InputSpec
    from deepmetric.training.config import parse_train

    out = dict(params)
    cfg = parse_params(PresetParams, params.get("preset"), "preset")
    if cfg.name is None:
        if cfg.overrides:
            raise ParamsError("preset.overrides is set but preset.name is null")
        return out
    preset = load_preset(cfg.name, root)
    data = params.get("data") or {}
    if isinstance(data, Mapping) and data.get("dataset") not in (None, preset.dataset):
        raise ParamsError(
            f"preset {cfg.name!r} is the {preset.dataset!r} setting but data.dataset is {data.get('dataset')!r}; "
            f"set data.dataset={preset.dataset} (and data.root) or pick another preset ({available(root)})"
        )
    blocks = {"train": copy.deepcopy(preset.train), "model": copy.deepcopy(preset.model)}
    for key, value in cfg.overrides.items():
        _set_dotted(blocks, key, value, cfg.name)
    try:
        parse_train(blocks["train"])
        parse_params(InputSpec, blocks["model"], "model")
    except ParamsError as exc:
        where = Path(PRESET_DIR) / f"{cfg.name}.yml"
        raise ParamsError(f"preset {cfg.name!r} ({where} + preset.overrides): {exc}") from exc
    out.update(blocks)
    return out
