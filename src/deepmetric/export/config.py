"""Typed `export` parameters (`conf/base/parameters_export.yml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Int8Params(BaseModel):
    """`export.int8:` — how the int8 model is made (used when `export.precision` is int8)."""

    model_config = ConfigDict(extra="forbid")

    # static: int8 activations calibrated on training images (QDQ); dynamic: int8 weights, ranges per batch.
    mode: Literal["static", "dynamic"] = "static"
    calibration_images: int = Field(256, ge=1, description="training-split images, evenly spaced")
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    reduce_range: bool = False  # 7-bit weights: for CPUs without VNNI, where u8s8 products can saturate
    # The stage fails when int8 loses more than this (a fraction: 0.005 = half a point) vs the fp32 model on the
    # parity images (the test split).
    max_map_drop: float = Field(0.01, ge=0)
    max_recall_drop: float = Field(0.01, ge=0)
    timing_repeats: int = Field(20, ge=1, description="calls per model for the latency figures")


class ExportParams(BaseModel):
    """`export:` — how the ONNX file is produced and how strictly it must match PyTorch."""

    model_config = ConfigDict(extra="forbid")

    # torch.onnx path: "dynamo" (torch.export based, the default exporter of torch 2.x; written without external
    # data so model.onnx is self-contained) or "torchscript" (the tracing exporter, `dynamo=False`).
    exporter: Literal["dynamo", "torchscript"] = "dynamo"
    opset: int = Field(18, ge=17, le=23)
    # Largest allowed |onnxruntime - pytorch| over every embedding coordinate of the parity images.
    tolerance: float = Field(1e-4, gt=0)
    # Largest allowed drop of Recall@1 (ONNX vs PyTorch) on the parity images.
    recall_tolerance: float = Field(0.01, ge=0)
    # Parity images: test-split rows of the validated manifest, at most this many (evenly spaced, deterministic).
    max_images: int = Field(1000, ge=2)
    batch_size: int = Field(64, gt=0)
    # fp32: model.onnx is the exported graph. int8: model.onnx is its quantized version (export.int8), checked
    # against the fp32 graph (report key "int8"); index and bundle then use the int8 model.
    precision: Literal["fp32", "int8"] = "fp32"
    int8: Int8Params = Field(default_factory=Int8Params)
