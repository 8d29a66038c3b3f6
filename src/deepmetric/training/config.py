"""Typed `train` and `model` parameters, validated before any work starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from deepmetric.methods import METHODS, BatchConfig, MethodParams
from deepmetric.models.backbones import BackboneConfig


class ParameterError(ValueError):
    """A parameter block is wrong; the message names every bad key and why."""


class OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["adam", "adamw", "radam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # Multiply the lr by `gamma` at these epochs (0-based epoch numbers).
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scale_min: float = Field(0.5, gt=0, le=1, description="RandomResizedCrop lower area bound")
    hflip: bool = Field(False, description="horizontal flips (off for glyphs: b vs d)")


class InputConfig(BaseModel):
    """`model` parameters: the evaluation transform (resize shorter side, centre crop) and normalisation."""

    model_config = ConfigDict(extra="forbid")

    resize: int = Field(64, gt=0)
    crop: int = Field(64, gt=0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _crop(self) -> InputConfig:
        if self.crop > self.resize:
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        return self


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "margin"
    seed: int = 0
    epochs: int = Field(10, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0, description="default: training images / batch size")
    embedding_dim: int = Field(128, gt=0)
    batch: BatchConfig = Field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    amp: bool = Field(False, description="mixed precision (CUDA only; ignored on CPU)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes for image decoding")
    cache_images: bool = Field(True, description="keep decoded images in memory (small datasets)")
    eval_batch_size: int = Field(128, gt=0)
    select_metric: str = Field("map@r", description="validation metric that picks the best epoch")
    progress: bool = True
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method parameter blocks")

    @model_validator(mode="after")
    def _method(self) -> TrainConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown train.method {self.method!r}; choose one of {sorted(METHODS)}")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"train.methods has blocks for unknown methods {unknown}; known: {sorted(METHODS)}")
        return self

    def method_params(self) -> MethodParams:
        cls = METHODS[self.method].Params
        try:
            return cls(**self.methods.get(self.method, {}))
        except ValidationError as exc:
            raise ParameterError(_explain(exc, f"train.methods.{self.method}")) from None


def _explain(exc: ValidationError, prefix: str) -> str:
    lines = [f"invalid parameters in {prefix}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        where = f"{prefix}.{loc}" if loc else prefix
        lines.append(f"  - {where}: {err['msg']}" + (f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""))
    return "\n".join(lines)


def parse(model_cls: type[BaseModel], data: dict[str, Any] | None, prefix: str):
    """Validate a parameter block, raising `ParameterError` with every problem listed."""
    try:
        return model_cls(**(data or {}))
    except ValidationError as exc:
        raise ParameterError(_explain(exc, prefix)) from None


def parse_train(train: dict[str, Any] | None) -> tuple[TrainConfig, MethodParams]:
    """`train` block → (TrainConfig, the selected method's params), with the method's backbone options
    applied where the user left them null."""
    data = dict(train or {})
    cfg = parse(TrainConfig, data, "train")
    params = cfg.method_params()
    opts = {
        k: v
        for k, v in METHODS[cfg.method].backbone_options(params).items()
        if getattr(cfg.backbone, k) is None
    }
    if opts:
        cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update=opts)})
    return cfg, params
