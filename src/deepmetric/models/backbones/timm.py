"""Any timm model (`train.backbone.name: timm/<model>`, e.g. ``timm/vit_small_patch16_224``, ``timm/convnext_tiny``),
its weights from a local file (`weights_path`: safetensors or a torch checkpoint). Nothing is downloaded: the hub is
switched off (``HF_HUB_OFFLINE``) before timm is imported, and the model is always created with
``pretrained=False``; the file is read here and fitted to the model with timm's own checkpoint filter of the model's
module (DINOv2, OpenAI CLIP, open_clip, timm layouts; position embeddings resampled to the model's grid).

Accepted file layouts (docs/training.md, "Weights files for timm/<name>"): a state dict (what ``model.state_dict()``
gives, as timm's, DINO's and DINOv2's released files, open_clip's ``visual.*`` / OpenAI CLIP's ``visual.*`` in a
full CLIP state dict or TorchScript archive); or a dict wrapping one under exactly one of ``state_dict``, ``model``,
``teacher`` (DINO's training checkpoint: the teacher's backbone, its projection head dropped); ``module.``
(DistributedDataParallel) prefixes are stripped. The classifier of the checkpoint, if any, is dropped (the backbone
has none). Anything else is refused naming what it holds.

A transformer's stages are its blocks (`forward_stages`: each block's patch tokens as a map [N, C, H/p, W/p], prefix
tokens dropped); its pooled feature is timm's ``forward_head(pre_logits=True)`` with `pool` as timm's global pool
(``token``: the class token; ``avg``/``max``/``avgmax``: over the patch tokens, after the final norm).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepmetric.models.backbones.base import (
    BACKBONES,
    Backbone,
    BackboneConfig,
    BackboneError,
    BackboneInfo,
    check_input_size,
)

PREFIX = "timm/"
# The wrappers a training script puts around a state dict (timm's train.py: state_dict; DeiT, MAE, many: model;
# DINO: teacher / student), accepted when exactly one of them is there.
WRAPPERS = ("state_dict", "model", "teacher")
_POOLS = ("token", "avg", "max", "avgmax")


class WeightsError(BackboneError):
    """`train.backbone.weights_path` holds no weights this model can take (unreadable, another layout or
    architecture). Its message names the file and what does not fit."""


def _timm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the hub, whatever a model's default config says
    import timm

    return timm


def arch(name: str) -> str:
    """The timm model name of ``timm/<model>``."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


@functools.lru_cache(maxsize=64)
def _skeleton(model: str) -> tuple[type, frozenset[str], str, int | None, bool]:
    """(class, constructor keywords, default pool, patch size, class token) of a timm model, from an instance on the
    meta device (no memory, no weights)."""
    timm = _timm()
    if not timm.is_model(model):
        names = timm.list_models()
        close = difflib.get_close_matches(model, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(PREFIX + c) for c in close)}?" if close else ""
        raise ValueError(f"unknown timm model {model!r}{hint} (every name of timm {timm.__version__}: "
                         "python -c 'import timm; print(timm.list_models())')")
    with torch.device("meta"):
        net = timm.create_model(model, pretrained=False, num_classes=0)
    keywords = frozenset(inspect.signature(type(net).__init__).parameters)
    pool = getattr(net, "global_pool", None)
    if not isinstance(pool, str):
        holder = pool if pool is not None else getattr(getattr(net, "head", None), "global_pool", None)
        pool = getattr(holder, "pool_type", "avg") or "avg"
    patch_embed = getattr(net, "patch_embed", None)
    patch = int(patch_embed.patch_size[0]) if patch_embed is not None and hasattr(patch_embed, "patch_size") else None
    return type(net), keywords, pool, patch, getattr(net, "cls_token", None) is not None


def describe(name: str) -> BackboneInfo:
    cls, keywords, default, patch, class_token = _skeleton(arch(name))
    transformer = patch is not None
    if "global_pool" not in keywords:
        pools: tuple[str, ...] = (default,)
    elif transformer and not issubclass(cls, _vit_class()):
        pools = (default,)  # other transformers: their own pooling only
    else:
        allowed = [p for p in _POOLS if p != "token" or (transformer and class_token)]
        pools = tuple(dict.fromkeys([default, *allowed]))
    options = {"grad_checkpointing"} | ({"drop_path_rate"} & keywords)
    if transformer and "img_size" in keywords:
        options.add("img_size")
    return BackboneInfo(pools=pools, patch=patch, options=frozenset(options), transformer=transformer)


def _vit_class() -> type:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer


# --- reading a weights file --------------------------------------------------------------------------------------

def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (safetensors, torch.save, or a TorchScript archive), unwrapped (`WRAPPERS`,
    ``module.`` / DINO's ``backbone.`` prefixes). `WeightsError` when the file is unreadable or holds another
    layout, naming the file and what it found."""
    path = Path(path)
    obj = _load(path)
    return _unwrap(obj, path)


def _load(path: Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then the JSON header
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"train.backbone.weights_path {str(path)!r}: not a readable safetensors file "
                               f"(truncated or corrupt?): {exc}") from None
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        try:  # a TorchScript archive (OpenAI's CLIP files): its parameters; no pickled Python object is loaded
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated; the files exist
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as exc:  # noqa: BLE001 - any failure of the archive is the file's
            raise WeightsError(f"train.backbone.weights_path {str(path)!r}: a TorchScript archive that does not "
                               f"load: {exc}") from None
    import argparse

    try:
        # weights only (no arbitrary objects); DINO's checkpoints carry their argparse arguments
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad file
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise WeightsError(f"train.backbone.weights_path {str(path)!r}: holds Python objects besides tensors "
                               f"({found.group(1)}), which are not loaded; save the state dict alone "
                               "(torch.save(model.state_dict(), 'weights.pth'))") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise WeightsError(f"train.backbone.weights_path {str(path)!r}: not a readable safetensors or torch "
                           f"checkpoint (truncated or corrupt?): {reason}") from None


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    where = f"train.backbone.weights_path {str(path)!r}"
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where}: holds a {type(obj).__name__}, not a state dict")
    if not _is_state_dict(obj):
        found = [k for k in WRAPPERS if _is_state_dict(obj.get(k))]
        if len(found) != 1:
            keys = sorted(map(str, obj))
            why = f"several wrappers {found}" if found else f"no state dict under {list(WRAPPERS)}"
            raise WeightsError(f"{where}: {why}; the file's top-level keys: {keys[:20]}"
                               f"{' …' if len(keys) > 20 else ''} (save the state dict you want alone)")
        obj = obj[found[0]]
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):  # DINO's MultiCropWrapper: backbone + projection head
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def load_weights(net: nn.Module, path: str | os.PathLike[str]) -> None:
    """Fit the weights in ``path`` to the timm model ``net`` (its module's ``checkpoint_filter_fn`` converts other
    layouts and resamples position embeddings) and load them; `WeightsError` lists missing/unexpected keys, or
    names the first layer whose shape differs."""
    state = read_weights(path)
    where = f"train.backbone.weights_path {str(path)!r}"
    model = getattr(net, "pretrained_cfg", {}).get("architecture") or type(net).__name__
    filter_fn = getattr(sys.modules[type(net).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            state = filter_fn(state, net)
        except Exception as exc:  # noqa: BLE001 - a filter fails in its own way on another layout
            raise WeightsError(f"{where}: timm's checkpoint filter for {model} cannot convert it "
                               f"({type(exc).__name__}: {exc}); is it a checkpoint of this architecture?") from None
    own = net.state_dict()
    classifier = getattr(net, "pretrained_cfg", {}).get("classifier") or "head"
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}  # the backbone has no classifier
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightsError(f"{where} does not fit timm model {model!r}: {_keys('missing', missing)}; "
                           f"{_keys('unexpected', unexpected)} (accepted layouts: docs/training.md)")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WeightsError(f"{where} does not fit timm model {model!r}: the first layer that differs is {k!r}, "
                               f"{tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model (weights of "
                               "another architecture or size?)")
    net.load_state_dict(state, strict=True)


def _keys(what: str, keys: list[str]) -> str:
    if not keys:
        return f"no {what} keys"
    more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
    return f"{len(keys)} {what} key(s) {keys[:8]}{more}"


# --- the backbone ------------------------------------------------------------------------------------------------

class TimmBackbone(Backbone):
    """A timm model (created with ``num_classes=0``) behind the `Backbone` interface."""

    def __init__(self, net: nn.Module, cfg: BackboneConfig) -> None:
        width = int(getattr(net, "head_hidden_size", None) or net.num_features)
        dims = [int(f["num_chs"]) for f in getattr(net, "feature_info", [])]
        super().__init__(cfg, dims or [width], width)
        self.net = net
        self.patch = describe(cfg.name).patch
        pcfg = getattr(net, "pretrained_cfg", {}) or {}
        self.mean = tuple(pcfg.get("mean", self.mean))
        self.std = tuple(pcfg.get("std", self.std))
        self._finish()

    def _check(self, x: torch.Tensor) -> None:
        """An input the patch size does not divide is a parameter error (model.crop), not timm's assertion."""
        if self.patch and (x.shape[-1] % self.patch or x.shape[-2] % self.patch):
            try:
                check_input_size(self.cfg.name, int(x.shape[-1] if x.shape[-1] % self.patch else x.shape[-2]),
                                 "the input size (model.crop)")
            except ValueError as exc:
                raise BackboneError(str(exc)) from None

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._pooled_and_stages(x)[1]

    def _pooled_and_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self._check(x)
        if not hasattr(self.net, "forward_intermediates"):
            raise BackboneError(f"timm model {self.cfg.name!r} gives no stage maps (no forward_intermediates): a method "
                              "that needs them (ranked_list multi_level) cannot use it")
        final, maps = self.net.forward_intermediates(x)
        return self.net.forward_head(final, pre_logits=True), list(maps)

    def layers(self) -> list[list[str]]:
        from timm.models import group_parameters

        if not hasattr(self.net, "group_matcher"):
            return [[n for n, _ in self.named_parameters()]]
        by_layer = group_parameters(self.net, self.net.group_matcher(coarse=False))
        return [[f"net.{n}" for n in by_layer[i]] for i in sorted(by_layer)]

    def no_weight_decay(self) -> set[str]:
        """timm's rule: 1-D parameters (norms, biases) and the model's ``no_weight_decay()`` (position embedding,
        class token)."""
        patterns = set(self.net.no_weight_decay()) if hasattr(self.net, "no_weight_decay") else set()
        return {f"net.{n}" for n, p in self.net.named_parameters()
                if p.ndim <= 1 or any(fnmatch.fnmatch(n, pat) for pat in patterns)}


@BACKBONES.register(PREFIX, prefix=True, weights_file="a local safetensors or torch checkpoint of the model "
                    "(timm, DINO, DINOv2, CLIP layouts)", doc="docs/training.md", describe=describe)
def build(cfg: BackboneConfig) -> TimmBackbone:
    timm = _timm()
    model = arch(cfg.name)
    info = describe(cfg.name)
    keywords = _skeleton(model)[1]
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": cfg.pool, "drop_path_rate": cfg.drop_path_rate or None}
    if info.transformer and "img_size" in keywords:
        # any input side the patch divides: the position embedding is resampled when the grid differs
        kwargs.update(img_size=cfg.img_size, dynamic_img_size=True)
        if cfg.pool in ("avg", "max", "avgmax") and "fc_norm" in keywords:
            kwargs["fc_norm"] = False  # keep the final norm on every token (what the checkpoint has), then pool
    net = timm.create_model(model, pretrained=False, **kwargs)
    if cfg.pretrained and cfg.weights_path:
        load_weights(net, cfg.weights_path)
    if cfg.grad_checkpointing:
        net.set_grad_checkpointing(True)
    return TimmBackbone(net, cfg)
