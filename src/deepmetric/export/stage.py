"""The `export` stage as one function: model file → ONNX bytes + parity report."""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import pandas as pd

from deepmetric.data.images import ImageLimits
from deepmetric.export.config import ExportParams, Int8Params
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
    limits: ImageLimits,
) -> tuple[bytes, dict[str, Any]]:
    """Export ``method`` to ONNX, check it against PyTorch on test images decoded under ``limits`` (the data
    parameters' per-image bounds), and quantize it when ``params.precision`` is int8."""
    t0 = time.perf_counter()
    onnx_bytes = export_onnx(method, input_cfg, exporter=params.exporter, opset=params.opset)
    export_s = time.perf_counter() - t0
    report = check_parity(
        method, input_cfg, onnx_bytes, manifest, root,
        tolerance=params.tolerance, recall_tolerance=params.recall_tolerance,
        max_images=params.max_images, batch_size=params.batch_size, limits=limits,
    )
    if params.precision == "int8":
        onnx_bytes, report["int8"] = int8_model(onnx_bytes, input_cfg, manifest, root, params, limits)
    meta = read_metadata(onnx_bytes)
    report.update({
        "precision": meta.get("precision", "fp32"),
        "exporter": params.exporter,
        "opset": params.opset,
        "export_seconds": round(export_s, 3),
        "onnx_bytes": len(onnx_bytes),
        "method": meta.get("method"),
        "input": meta.get("input"),
        "weights_sha256": meta.get("weights_sha256"),
        "backbone": json.loads(meta["backbone"]) if meta.get("backbone") else None,
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    })
    return onnx_bytes, report


def int8_model(
    fp32_bytes: bytes, input_cfg: Any, manifest: pd.DataFrame, root: str | os.PathLike[str], params: ExportParams,
    limits: ImageLimits,
) -> tuple[bytes, dict[str, Any]]:
    """Quantize the fp32 export (`export.int8`) and measure it against fp32 on the parity images; raise
    `QuantizationError` when it loses more than `export.int8.max_map_drop` / `max_recall_drop`."""
    from deepmetric.export.images import row_batches, spaced_subset, test_rows
    from deepmetric.export.quantize import QuantizationError, int8_report, quantize_onnx

    q: Int8Params = params.int8
    calibration = None
    if q.mode == "static":
        train = manifest[manifest["split"] == "train"]
        if train.empty:
            raise QuantizationError("static int8 calibration needs training-split images; the manifest has none "
                                    "(use export.int8.mode: dynamic)")
        rows = spaced_subset(train.reset_index(drop=True), q.calibration_images)
        calibration = row_batches(root, rows, input_cfg, limits, params.batch_size)
    t0 = time.perf_counter()
    int8_bytes = quantize_onnx(fp32_bytes, q.mode, calibration, per_channel=q.per_channel,
                               calibration_method=q.calibration_method, reduce_range=q.reduce_range)
    quantize_s = time.perf_counter() - t0
    test = spaced_subset(test_rows(manifest), params.max_images)
    batches = list(row_batches(root, test, input_cfg, limits, params.batch_size))
    report = int8_report(fp32_bytes, int8_bytes, batches, test["label"].to_numpy(), repeats=q.timing_repeats)
    report.update({"mode": q.mode, "calibration_images": q.calibration_images if q.mode == "static" else 0,
                   "quantize_seconds": round(quantize_s, 3), "max_map_drop": q.max_map_drop,
                   "max_recall_drop": q.max_recall_drop})
    check_int8(report, q)
    return int8_bytes, report


def check_int8(report: dict[str, Any], q: Int8Params) -> None:
    """Set ``report["passed"]``; raise `QuantizationError` naming what int8 lost beyond the allowed drops."""
    from deepmetric.export.quantize import QuantizationError

    problems = [f"{name} dropped {report[key]:.2f} points (fp32 {100 * report['fp32'][name]:.2f} → int8 "
                f"{100 * report['int8'][name]:.2f}), more than export.int8.{limit_key} = {limit:g}"
                for name, key, limit_key, limit in (("map@r", "map@r_drop_points", "max_map_drop", q.max_map_drop),
                                                    ("recall@1", "recall@1_drop_points", "max_recall_drop",
                                                     q.max_recall_drop))
                if report[key] > 100 * limit + 1e-9]
    report["passed"] = not problems
    if problems:
        raise QuantizationError(f"int8 model refused on {report['images']} test images: " + "; ".join(problems))
