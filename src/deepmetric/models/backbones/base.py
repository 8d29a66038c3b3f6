"""What every backbone family shares: the `train.backbone` config, pooling, the `Backbone` interface (pooled features,
stage maps, layers for freezing and layer-wise lr decay, the runtime's autocast), `StagedBackbone` (a CNN trunk: stem
+ stages), and the registry of names (`BACKBONES`) that `build_backbone` looks a name up in.

A family module registers a builder ``(BackboneConfig) -> Backbone`` under each name it serves, with metadata
``weights_file``: what `weights_path` must hold for ``pretrained: true`` (``None``: the weights ship with a package),
``doc``: its row in docs/training.md ("Backbones"), and optionally ``describe``: ``name -> BackboneInfo`` (what the
parameters are checked against before anything is built; default `CNN_INFO`). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from deepmetric.models.preprocess import IMAGENET_MEAN, IMAGENET_STD
from deepmetric.registry import Registry

PoolName = Literal["avg", "max", "avgmax", "gem", "token"]


class BackboneError(ValueError):
    """A backbone parameter or weights file that does not fit the model (a user error: `kedro run` prints
    ``error: <message>`` and exits 1, `deepmetric.errors`)."""


@dataclass(frozen=True)
class BackboneInfo:
    """What a backbone name accepts, known before it is built (parameter validation).

    ``pools``: the `pool` values it takes, its own default first (a ViT with a class token: ``token``); ``patch``:
    the patch size an input side must be a multiple of (None: any size); ``options``: which of `drop_path_rate`,
    `img_size`, `grad_checkpointing` it supports; ``transformer``: pooled from tokens."""

    pools: tuple[str, ...]
    patch: int | None = None
    options: frozenset[str] = frozenset()
    # Pooled from tokens (a transformer): a method's pooling choice, made for a CNN's feature map, does not apply.
    transformer: bool = False


# The CNN trunks of this package (`StagedBackbone`): pooling of the last stage's map, gradient checkpointing per stage.
CNN_INFO = BackboneInfo(pools=("avg", "max", "avgmax", "gem"), options=frozenset({"grad_checkpointing"}))


class BackboneConfig(BaseModel):
    """`train.backbone` parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = "resnet18"
    # ImageNet weights: a family that reads them from a file (ResNets: a local torchvision state dict; timm/<name>: a
    # safetensors or torch checkpoint) needs `weights_path`; EfficientNet-Lite0 takes them from its package.
    pretrained: bool = False
    weights_path: str | None = None
    # null = the method's choice (its paper's) on a CNN, the model's own on a transformer (its class token).
    pool: PoolName | None = None
    # BatchNorm of the trunk: false = trains as usual; "stats" = running statistics fixed (eval mode), affine γ/β
    # still learn (the D&C and Sharing authors' code); true = statistics and γ/β both fixed.
    frozen_bn: bool | Literal["stats"] | None = None
    # --- fine-tuning a pretrained trunk (every family; `Backbone.layers` says what a layer is) ---
    freeze_stem: bool = Field(False, description="no gradient for the stem (a ViT's patch embedding, class token "
                              "and position embedding)")
    freeze_blocks: int = Field(0, ge=0, description="no gradient for the stem and the first N blocks (CNN: stages)")
    layer_decay: float = Field(1.0, gt=0, le=1, description="layer-wise lr decay: layer i of L gets lr × "
                               "layer_decay^(L-1-i) (1: off)")
    grad_checkpointing: bool = Field(False, description="recompute activations in backward (less memory, ~30% "
                                     "slower): larger batches")
    # --- timm/<name> only ---
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth of the last block (timm models)")
    img_size: int | None = Field(None, gt=0, description="the grid a ViT's position embedding is kept at (null: the "
                                 "model's, 224 for *_224); the pretrained one is resampled to it once, at load")
    # The sha256 of the weights file: given, the file must have it (a preset names the file it was written for);
    # null, it is filled in from the file. Kept in the model file, the ONNX metadata and the bundle.
    weights_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of weights_path")

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        BACKBONES.check(name)
        describe(name)  # a family that claims a prefix checks the rest of the name (unknown timm model, …)
        return name

    @model_validator(mode="after")
    def _weights(self) -> BackboneConfig:
        weights_file = BACKBONES.meta(self.name)["weights_file"]
        if self.pretrained and weights_file and not self.weights_path:
            raise ValueError(
                f"backbone {self.name!r} with pretrained=true needs weights_path: {weights_file} "
                "(deepmetric never downloads weights). Set pretrained=false to train from scratch."
            )
        if self.weights_path and not Path(self.weights_path).is_file():
            raise ValueError(f"backbone weights_path {self.weights_path!r} is not a file")
        if self.pretrained and self.weights_path:
            digest = file_sha256(self.weights_path)
            if self.weights_sha256 and digest != self.weights_sha256:
                raise ValueError(f"backbone weights_path {self.weights_path!r} has sha256 {digest}, not the "
                                 f"weights_sha256 {self.weights_sha256} asked for (another file or version)")
            self.weights_sha256 = digest
        return self

    @model_validator(mode="after")
    def _fits_the_family(self) -> BackboneConfig:
        info = describe(self.name)
        if self.pool is not None and self.pool not in info.pools:
            raise ValueError(f"pool {self.pool!r} does not apply to backbone {self.name!r}; it takes "
                             f"{', '.join(info.pools)}")
        defaults = BackboneConfig.model_fields
        unsupported = sorted(k for k in ("drop_path_rate", "img_size", "grad_checkpointing")
                             if getattr(self, k) != defaults[k].default and k not in info.options)
        if unsupported:
            raise ValueError(f"{', '.join(unsupported)}: not an option of backbone {self.name!r} "
                             f"(options of this family: {sorted(info.options) or 'none'})")
        if self.img_size is not None:
            check_input_size(self.name, self.img_size, "train.backbone.img_size")
        return self

    def with_method_options(self, options: dict[str, Any]) -> BackboneConfig:
        """This config with a method's backbone choices (`Method.backbone_options`, its paper's CNN settings) where
        the user left them null; a transformer keeps its own pooling (the method's was made for a feature map)."""
        opts = {k: v for k, v in options.items() if getattr(self, k) is None}
        if "pool" in opts and describe(self.name).transformer:
            del opts["pool"]
        return self.model_copy(update=opts) if opts else self


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (remembered while its size and mtime stay the same)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def describe(name: str) -> BackboneInfo:
    """What backbone ``name`` accepts (its family's ``describe``; `CNN_INFO` for the CNN families)."""
    fn = BACKBONES.meta(name).get("describe")
    return fn(name) if fn is not None else CNN_INFO


def check_input_size(name: str, size: int, what: str = "model.crop") -> None:
    """Refuse an input side that the backbone's patch size does not divide (a ViT cuts its input into patches)."""
    patch = describe(name).patch
    if patch and size % patch:
        lower, upper = size // patch * patch, (size // patch + 1) * patch
        raise ValueError(f"{what} = {size} is not a multiple of the patch size {patch} of backbone {name!r}: "
                         f"use {lower or patch} or {upper}")


class _Pool(nn.Module):
    """Global pooling of a feature map [N, C, H, W] → [N, C]: avg, max, avgmax (their sum) or gem (generalised mean,
    Radenović et al.: (mean x^p)^(1/p), p learnt from 3)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gem":
            self.p = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return x.mean(dim=(2, 3))
        if self.kind == "max":
            return x.amax(dim=(2, 3))
        if self.kind == "gem":
            return x.clamp(min=1e-6).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))


class Backbone(nn.Module):
    """The interface every backbone offers the methods, evaluation and export.

    - ``forward(x)`` → pooled features ``[N, feature_dim]``;
    - ``forward_stages(x)`` → the feature map ``[N, C, H, W]`` of every stage (multi-level heads; a transformer's
      stages are its blocks, each the grid of patch tokens, prefix tokens dropped), ``stage_dims`` their widths;
    - ``forward_with_stages(x)`` → both from one pass (what ``forward`` and ``forward_stages`` return);
    - ``layers()`` → parameter names by depth (layer 0: the stem; then each block/stage; last: what follows),
      what freezing (`freeze_stem`, `freeze_blocks`) and layer-wise lr decay (`layer_decay`) count in;
    - ``param_groups(lr, weight_decay)`` → the optimiser groups of the backbone, named ``backbone`` (one group) or
      ``backbone@<part>`` (layer-wise lr decay, weight-decay exclusions): a method adds them to its own.

    ``mean``/``std`` are the input normalisation the weights expect. A subclass implements `_pooled`, `_stages`
    (and `_pooled_and_stages` when one pass gives both) and `group_matcher`.
    """

    def __init__(self, cfg: BackboneConfig, stage_dims: list[int], feature_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.stage_dims = list(stage_dims)
        self.feature_dim = int(feature_dim)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def _finish(self) -> None:
        """Apply the config's freezing; a subclass calls it at the end of its ``__init__``."""
        cfg = self.cfg
        if cfg.frozen_bn is True:  # "stats" keeps γ/β trainable
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    for p in m.parameters():
                        p.requires_grad_(False)
        frozen = cfg.freeze_blocks + 1 if cfg.freeze_blocks else int(cfg.freeze_stem)
        if frozen:
            params = dict(self.named_parameters())
            for layer in self.layers()[:frozen]:
                for name in layer:
                    params[name].requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.cfg.frozen_bn:
            # Frozen BatchNorm (true or "stats"): running statistics stay fixed in training mode too.
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # Set by `deepmetric.training.precision.Precision.prepare` during training: autocast and memory format of
    # the trunk. Not part of the state dict; a rebuilt model (evaluation, export) runs plain float32.
    runtime = None

    # --- what a family implements ------------------------------------------------------------------------------
    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def _pooled_and_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        raise NotImplementedError

    def group_matcher(self) -> dict[str, Any]:
        """timm's layer-grouping regexes over this module's parameter names (``stem``, ``blocks``)."""
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay (none: every parameter decays, as the CNN families always did)."""
        return set()

    # --- the interface -----------------------------------------------------------------------------------------
    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        rt = self.runtime
        if rt is None:
            return self._stages(x)
        with rt.autocast():
            maps = self._stages(rt.input(x))
        return [m.float() for m in maps]

    def forward_with_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        rt = self.runtime
        if rt is None:
            return self._pooled_and_stages(x)
        with rt.autocast():
            pooled, maps = self._pooled_and_stages(rt.input(x))
        return pooled.float(), [m.float() for m in maps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rt = self.runtime
        if rt is None:
            return self._pooled(x)
        with rt.autocast():
            out = self._pooled(rt.input(x))
        return out.float()

    def provenance(self) -> dict[str, Any]:
        """What the model file, the ONNX metadata and the bundle record of the backbone: its family (module),
        name and the sha256 of the weights file it started from (null: random initialisation)."""
        return {"family": BACKBONES.entry(self.cfg.name).module.rsplit(".", 1)[-1], "name": self.cfg.name,
                "weights_sha256": self.cfg.weights_sha256}

    def layers(self) -> list[list[str]]:
        """Parameter names by depth (timm's `group_parameters` over `group_matcher`): [stem, block 1, …, rest]."""
        from timm.models import group_parameters

        by_layer = group_parameters(self, self.group_matcher())
        return [by_layer[i] for i in sorted(by_layer)]

    def param_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """The backbone's optimiser groups. Without layer-wise lr decay and weight-decay exclusions: one group
        ``backbone``. Otherwise BEiT's rule, as timm's `param_groups_layer_decay`: layer i of `layers()` (L in all)
        gets lr × layer_decay^(L-1-i), the `no_weight_decay` parameters weight decay 0; each group is named
        ``backbone@[layer<i>_]decay|no_decay`` and carries its ``lr_scale`` (`train.optimizer.group_lr.backbone` and
        ``set_lr_scale("backbone")`` address them all)."""
        exclude, decay = self.no_weight_decay(), self.cfg.layer_decay
        if decay == 1.0 and not exclude:
            return [{"name": "backbone", "params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]
        layers, named = self.layers(), dict(self.named_parameters())
        groups: dict[str, dict[str, Any]] = {}
        for i, names in enumerate(layers):
            scale = decay ** (len(layers) - 1 - i)
            for name in names:
                kept = name not in exclude
                key = "backbone@" + (f"layer{i}_" if decay < 1.0 else "") + ("decay" if kept else "no_decay")
                group = groups.setdefault(key, {"name": key, "params": [], "lr": lr * scale, "lr_scale": scale,
                                                "weight_decay": weight_decay if kept else 0.0})
                group["params"].append(named[name])
        return list(groups.values())


class StagedBackbone(Backbone):
    """A CNN trunk split into a stem and stages; the pooled feature pools the last stage's map (`pool`)."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], stage_dims: list[int], cfg: BackboneConfig):
        super().__init__(cfg, stage_dims, stage_dims[-1])
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.pool = _Pool(cfg.pool or "avg")
        self._finish()

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        out = []
        checkpointed = self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            if checkpointed:
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            out.append(x)
        return out

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self._stages(x)[-1])

    def _pooled_and_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        maps = self._stages(x)
        return self.pool(maps[-1]), maps

    def group_matcher(self) -> dict[str, Any]:
        return {"stem": r"^stem\.", "blocks": [(r"^stages\.(\d+)\.", None), (r"^pool\.", (99999,))]}


# name → builder ``(BackboneConfig) -> Backbone``; metadata ``weights_file``, ``doc`` and optionally ``describe``
# (see the module docstring).
BACKBONES: Registry[Callable[[BackboneConfig], Backbone]] = Registry("backbone", required=("weights_file", "doc"))


def build_backbone(cfg: BackboneConfig) -> Backbone:
    """The backbone `cfg.name` names, built by its family."""
    return BACKBONES.lookup(cfg.name, what="train.backbone.name")(cfg)
