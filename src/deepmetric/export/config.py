"""Typed `export` parameters (`conf/base/parameters_export.yml`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
