"""Thin node: parameters → typed config → `deepmetric.bundle.build.build_bundle`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.bundle.build import build_bundle
from deepmetric.bundle.config import BundleParams


def make_bundle(
    onnx_model: bytes,
    faiss_index: bytes,
    index_ids: pd.DataFrame,
    metrics: dict[str, Any],
    index_report: dict[str, Any],
    thresholds: dict[str, Any] | None,
    data: dict[str, Any],
    bundle: dict[str, Any],
) -> dict[str, bytes]:
    data_cfg = parse_params(DataParams, data, "data")
    params = parse_params(BundleParams, bundle, "bundle")
    return build_bundle(onnx_model, faiss_index, index_ids, metrics, params, index_report=index_report,
                        dataset=data_cfg.dataset, image_root=str(data_cfg.root), limits=data_cfg.limits,
                        thresholds=thresholds)
