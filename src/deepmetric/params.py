"""Every parameter block of `conf/base/parameters_*.yml`, validated together before a run starts.

`ParamsCheckHook` (registered in settings.py) runs this as soon as Kedro has loaded the configuration, so a
misspelt key or a bad value in any block stops `kedro run` (and so `dvc repro`) with a message naming it,
before any stage does work. It also applies a paper preset (`preset.name`, `deepmetric.training.presets`): the
preset's `train` and `model` blocks replace the parameter files' in the catalog, so every node sees them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from deepmetric.data.config import ParamsError, parse_params

# block name -> "module:attribute" of its pydantic model (or of a parse function taking the block).
BLOCKS: dict[str, str] = {
    "glyphs": "deepmetric.data.glyphs:GlyphParams",
    "data": "deepmetric.data.config:DataParams",
    "validate": "deepmetric.validation.params:ValidateParams",
    "train": "deepmetric.training.config:parse_train",
    "model": "deepmetric.data.transforms:InputSpec",
    "train_checkpoint_dir": "builtins:str",
    "preset": "deepmetric.training.presets:PresetParams",
    "train_cache_dir": "builtins:str",
    "train_live_dir": "builtins:str",
    "evaluate": "deepmetric.evaluation.protocol:EvaluateConfig",
    "export": "deepmetric.export.config:ExportParams",
    "index": "deepmetric.index.config:IndexParams",
    "bundle": "deepmetric.bundle.config:BundleParams",
}


def _resolve(spec: str) -> Callable[..., Any] | type:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def validate_params(params: Mapping[str, Any], root: str | Path = ".") -> None:
    """Raise `ParamsError` listing every invalid or unknown block (after applying a preset, see
    `deepmetric.training.presets`; `root` is the project folder holding conf/presets)."""
    from deepmetric.training.presets import resolve

    problems: list[str] = []
    try:
        params = resolve(params, root)
    except ParamsError as exc:
        problems.append(str(exc))
    unknown = sorted(set(params) - set(BLOCKS))
    if unknown:
        problems.append(f"unknown parameter block(s) {unknown}; known: {sorted(BLOCKS)}")
    for name, spec in BLOCKS.items():
        if name not in params:
            continue
        target = _resolve(spec)
        try:
            if target is str:
                if not isinstance(params[name], str):
                    raise ParamsError(f"`{name}` must be a path string, got {params[name]!r}")
            elif isinstance(target, type):
                parse_params(target, params[name], name)
            else:
                target(params[name])
        except (ParamsError, ValueError) as exc:
            problems.append(str(exc))
    if not problems:
        problems.extend(_across_blocks(params))
    if problems:
        raise ParamsError("\n".join(problems))


def _across_blocks(params: Mapping[str, Any]) -> list[str]:
    """What no block can check alone: the input size (`model.crop`) must suit the backbone (`train.backbone`: a
    ViT's patch size divides it)."""
    if "train" not in params or "model" not in params:
        return []
    from deepmetric.training.config import InputConfig, check_input, parse_train

    cfg, _ = parse_train(params["train"])
    try:
        check_input(cfg, parse_params(InputConfig, params["model"], "model"))
    except ValueError as exc:
        return [str(exc)]
    return []


def _catalog_entries(name: str, value: Any) -> dict[str, Any]:
    """`params:<name>` and its nested `params:<name>.<key>` entries, as Kedro adds them."""
    out = {f"params:{name}": value}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(_catalog_entries(f"{name}.{k}", v))
    return out


class ParamsCheckHook:
    """Validates every block before a run and puts the selected preset's `train`/`model` into the catalog."""

    root: Path = Path(".")

    @hook_impl
    def after_context_created(self, context) -> None:
        self.root = Path(context.project_path)
        validate_params(context.params, self.root)

    @hook_impl
    def after_catalog_created(self, catalog, parameters: Mapping[str, Any]) -> None:
        from deepmetric.training.presets import resolve

        params = parameters.get("parameters", parameters)
        resolved = resolve(params, self.root)
        if resolved == dict(params):
            return
        for block in ("train", "model"):
            for key, value in _catalog_entries(block, resolved[block]).items():
                catalog[key] = value
        catalog["parameters"] = resolved
