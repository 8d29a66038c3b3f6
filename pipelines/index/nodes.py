"""Thin node: parameters → typed configs → `deepmetric.index.gallery.build_gallery_index`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.export.stage import check_input_spec
from deepmetric.index.config import IndexParams
from deepmetric.index.embedder import OnnxEmbedder
from deepmetric.index.gallery import build_gallery_index
from deepmetric.training.config import InputConfig


def build_index(
    onnx_model: bytes,
    manifest: pd.DataFrame,
    data: dict[str, Any],
    model: dict[str, Any],
    index: dict[str, Any],
) -> tuple[bytes, pd.DataFrame, dict[str, Any]]:
    data_cfg = parse_params(DataParams, data, "data")
    params = parse_params(IndexParams, index, "index")
    model_cfg = parse_params(InputConfig, model, "model")
    check_input_spec(OnnxEmbedder(onnx_model).spec, model_cfg, "the exported model (data/06_models/model.onnx)")
    return build_gallery_index(onnx_model, manifest, data_cfg.root, params, data_cfg.limits)
