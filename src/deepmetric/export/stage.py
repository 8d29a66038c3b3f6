"""The `export` stage as one function: model file → ONNX bytes + parity report."""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from deepmetric.export.config import ExportParams
from deepmetric.export.onnx_export import export_onnx, read_metadata
from deepmetric.export.parity import check_parity


def check_input_spec(model_spec: Any, params_model: Any, what: str) -> None:
    """Refuse when the `model` parameters differ from the spec the model was trained/exported with."""
    if params_model is None:
        return
    fields = ("resize", "crop", "mean", "std")
    a = {f: tuple(getattr(model_spec, f)) if f in ("mean", "std") else int(getattr(model_spec, f)) for f in fields}
    b = {f: tuple(getattr(params_model, f)) if f in ("mean", "std") else int(getattr(params_model, f)) for f in fields}
    diff = [f"model.{f}: parameters say {b[f]}, {what} has {a[f]}" for f in fields if a[f] != b[f]]
    if diff:
        raise ValueError(f"the `model` parameters do not match {what} (re-run the stages before): " + "; ".join(diff))


def export_stage(
    method: Any, input_cfg: Any, manifest: pd.DataFrame, root: str | os.PathLike[str], params: ExportParams,
    max_pixels: int,
) -> tuple[bytes, dict[str, Any]]:
    t0 = time.perf_counter()
    onnx_bytes = export_onnx(method, input_cfg, exporter=params.exporter, opset=params.opset)
    export_s = time.perf_counter() - t0
    report = check_parity(
        method, input_cfg, onnx_bytes, manifest, root,
        tolerance=params.tolerance, recall_tolerance=params.recall_tolerance,
        max_images=params.max_images, batch_size=params.batch_size, max_pixels=max_pixels,
    )
    meta = read_metadata(onnx_bytes)
    report.update({
        "exporter": params.exporter,
        "opset": params.opset,
        "export_seconds": round(export_s, 3),
        "onnx_bytes": len(onnx_bytes),
        "method": meta.get("method"),
        "input": meta.get("input"),
    })
    return onnx_bytes, report
