"""Typed `train` and `model` parameters, validated before any work starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepmetric.data.config import ParamsError, parse_params

from deepmetric.data.transforms import InputSpec
from deepmetric.methods import METHODS, BatchConfig, MethodParams
from deepmetric.methods.base import lr_group
from deepmetric.models.backbones import BackboneConfig, check_input_size
from deepmetric.training.data import CacheConfig


# One parameter-error type and parser for the whole project (message names every bad key).
ParameterError = ParamsError
parse = parse_params


class OptimizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["adam", "adamw", "radam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    # Multiply the lr by `gamma` at these epochs (0-based epoch numbers).
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    # Absolute lr per optimiser group of the method (names in docs/methods/, e.g. backbone, head, masks, loss);
    # wins over `lr` and over the method's own per-part lr. The schedule scales these too.
    group_lr: dict[str, float] = Field(default_factory=dict, description="absolute lr per optimiser group")

    @field_validator("group_lr")
    @classmethod
    def _group_lr(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: x for k, x in v.items() if not x >= 0}
        if bad:
            raise ValueError(f"group learning rates must be >= 0, got {bad}")
        return v

    @field_validator("milestones")
    @classmethod
    def _milestones(cls, v: list[int]) -> list[int]:
        if any(m < 0 for m in v):
            raise ValueError(f"milestones are 0-based epoch numbers (>= 0), got {v}")
        return v


def apply_group_lr(groups: list[dict[str, Any]], group_lr: dict[str, float], method: str) -> list[dict[str, Any]]:
    """Set the absolute lr of the optimiser groups named in `train.optimizer.group_lr`; a name the method does
    not have is a parameter error naming it."""
    names = list(dict.fromkeys(lr_group(g["name"]) for g in groups))
    unknown = sorted(set(group_lr) - set(names))
    if unknown:
        raise ParamsError(
            f"train.optimizer.group_lr: method {method!r} has no optimiser group(s) {unknown}; its groups: {names}"
        )
    # a group split in parts (``backbone@…``, layer-wise lr decay) keeps each part's scale of the group's lr
    return [{**g, "lr": group_lr[lr_group(g["name"])] * g.get("lr_scale", 1.0)} if lr_group(g["name"]) in group_lr
            else g for g in groups]


class ErasingConfig(BaseModel):
    """`train.augment.erasing`: Random Erasing (Zhong et al.), as Intra-Batch's re-id transform. p = 0: off."""

    model_config = ConfigDict(extra="forbid")

    p: float = Field(0.0, ge=0, le=1, description="probability of erasing one rectangle (Intra-Batch: 0.5)")
    area: tuple[float, float] = Field((0.02, 0.4), description="erased fraction of the image, min and max")
    min_aspect: float = Field(0.3, gt=0, le=1, description="aspect ratio drawn from [min_aspect, 1/min_aspect]")
    value: tuple[float, float, float] = Field((0.4914, 0.4822, 0.4465), description="fill, in normalised units")

    @field_validator("area")
    @classmethod
    def _area(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] < 1:
            raise ValueError(f"must satisfy 0 < min <= max < 1, got {list(v)}")
        return v


class AugmentConfig(BaseModel):
    """`train.augment`. The defaults are the glyph set's (no flip); the paper presets set the rest."""

    model_config = ConfigDict(extra="forbid")

    crop: Literal["resized", "random"] = Field(
        "resized", description="resized: RandomResizedCrop(model.crop, scale, ratio); random: resize then a random crop"
    )
    scale_min: float = Field(0.5, gt=0, le=1, description="RandomResizedCrop lower area bound (torchvision: 0.08)")
    scale_max: float = Field(1.0, gt=0, le=1, description="RandomResizedCrop upper area bound")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect-ratio range")
    resize: int | None = Field(None, gt=0, description="crop: random — shorter side before cropping (null: model.resize)")
    square_resize: bool = Field(False, description="crop: random — warp to resize × resize (Caffe), aspect not kept")
    hflip: bool = Field(False, description="horizontal flips (off for glyphs: b vs d)")
    erasing: ErasingConfig = Field(default_factory=ErasingConfig)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        if self.scale_min > self.scale_max:
            raise ValueError(f"scale_min ({self.scale_min}) must not exceed scale_max ({self.scale_max})")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {list(self.ratio)}")
        return self


class DistributedConfig(BaseModel):
    """`train.distributed`: data-parallel training under torchrun (`deepmetric.training.distributed`).

    One process per device; with more than one process in all, the train stage launches
    ``python -m torch.distributed.run … -m deepmetric.training.worker`` itself. Multi-node: this machine is
    node 0 (global rank 0 runs here and writes every artefact); the other nodes join by hand with the
    torchrun command the launcher prints (README: "Training on several GPUs / machines").
    """

    model_config = ConfigDict(extra="forbid")

    nproc_per_node: int = Field(1, ge=1, le=1024, description="processes on this machine (one per GPU)")
    nnodes: int = Field(1, ge=1, le=4096, description="machines taking part (each runs nproc_per_node)")
    rdzv_backend: Literal["static", "c10d"] = Field(
        "static", description="multi-node rendezvous: static (node ranks by hand, rank 0 here) | c10d"
    )
    rdzv_endpoint: str | None = Field(None, description="host:port of node 0, reachable by every node (nnodes > 1)")
    rdzv_id: str = Field("deepmetric", pattern=r"^[A-Za-z0-9_.-]+$", description="job id (c10d rendezvous)")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU")
    gather_embeddings: bool = Field(
        True, description="every rank's loss sees the all-gathered embeddings of the global batch"
    )
    sync_batchnorm: bool = Field(False, description="SyncBatchNorm (CUDA only): BN statistics over the global batch")
    timeout_s: int = Field(1800, gt=0, description="a collective waiting longer than this fails the run")
    max_restarts: int = Field(0, ge=0, description="torchrun restarts of the whole job after a failure")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _endpoint(self) -> DistributedConfig:
        if self.nnodes > 1:
            if not self.rdzv_endpoint:
                raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0, reachable by every node)")
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"rdzv_endpoint {self.rdzv_endpoint!r} is not host:port")
        return self


# The `model` parameters are the data module's `InputSpec` (one definition of the input).
InputConfig = InputSpec


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = "margin"
    seed: int = Field(0, ge=-(2**63), lt=2**63, description="every random draw of a run derives from it "
                      "(deepmetric.runtime): a 64-bit integer")
    epochs: int = Field(10, gt=0)
    steps_per_epoch: int | None = Field(None, gt=0, description="default: training images / batch size")
    embedding_dim: int | None = Field(128, gt=0, description="null: no embedding head, the backbone's pooled feature")
    batch: BatchConfig = Field(default_factory=BatchConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    # --- the data path (deepmetric.training.data) ---
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes that decode and augment (auto: one per core, at most 16)")
    prefetch_factor: int = Field(2, ge=1, description="batches each worker prepares ahead")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    decode: Literal["cpu", "gpu"] = Field("cpu", description="gpu: nvJPEG batch decode + crop on the GPU (CUDA)")
    # --- precision and speed (deepmetric.training.precision) ---
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast dtype of the backbone")
    channels_last: bool = Field(False, description="NHWC weights and inputs for the backbone")
    compile: bool = Field(False, description="torch.compile the backbone")
    eval_batch_size: int = Field(128, gt=0)
    select_metric: str = Field("map@r", description="validation metric that picks the best epoch")
    progress: bool = True
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict, description="per-method parameter blocks")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = {"amp": "train.precision (fp32 | bf16 | fp16)", "cache_images": "train.cache.mode (auto | raw | "
                     "jpeg | off: a bounded cache on disk)"}
            for old, new in moved.items():
                if old in data:
                    raise ValueError(f"train.{old} was replaced by {new}; remove train.{old}")
        return data

    @model_validator(mode="after")
    def _method(self) -> TrainConfig:
        METHODS.check(self.method, what="train.method")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"train.methods has blocks for unknown methods {unknown}; known: {METHODS.names()}")
        world = self.distributed.world_size
        if world > 1 and self.batch.size % world:
            raise ValueError(
                f"the global batch ({self.batch.classes_per_batch} classes × {self.batch.samples_per_class} = "
                f"{self.batch.size} images) must split evenly over {world} processes "
                f"(train.distributed: {self.distributed.nnodes} node(s) × {self.distributed.nproc_per_node})"
            )
        return self

    def method_params(self) -> MethodParams:
        return parse_params(METHODS[self.method].Params, self.methods.get(self.method), f"train.methods.{self.method}")


def check_input(cfg: TrainConfig, spec: InputSpec) -> None:
    """What neither the `train` nor the `model` block can check alone: the input size suits the backbone (a ViT's
    patch size divides `model.crop`); ValueError naming both otherwise."""
    check_input_size(cfg.backbone.name, spec.crop)


def parse_train(train: dict[str, Any] | None) -> tuple[TrainConfig, MethodParams]:
    """`train` block → (TrainConfig, the selected method's params), with the method's backbone options
    applied where the user left them null."""
    data = dict(train or {})
    cfg = parse(TrainConfig, data, "train")
    params = cfg.method_params()
    opts = dict(METHODS[cfg.method].backbone_options(params))
    if opts.get("frozen_bn") and not cfg.backbone.pretrained:
        # The papers freeze BatchNorm of an ImageNet-pretrained trunk; freezing the random statistics of a
        # network trained from scratch would only cripple it, so a from-scratch backbone keeps BN trainable.
        opts["frozen_bn"] = False
    backbone = cfg.backbone.with_method_options(opts)  # where the user left them null; a ViT keeps its pooling
    if backbone is not cfg.backbone:
        cfg = cfg.model_copy(update={"backbone": backbone})
    return cfg, params
