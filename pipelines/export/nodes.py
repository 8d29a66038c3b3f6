"""Thin node: parameters → typed configs → `deepmetric.export.stage.export_stage`."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.export.config import ExportParams
from deepmetric.export.stage import check_input_spec, export_stage
from deepmetric.training.config import InputConfig
from deepmetric.training.model_io import load_model


def export_model(
    trained_model: dict[str, Any],
    manifest: pd.DataFrame,
    data: dict[str, Any],
    model: dict[str, Any],
    export: dict[str, Any],
) -> tuple[bytes, dict[str, Any]]:
    data_cfg = parse_params(DataParams, data, "data")
    params = parse_params(ExportParams, export, "export")
    model_cfg = parse_params(InputConfig, model, "model")
    method, input_cfg = load_model(trained_model)
    check_input_spec(input_cfg, model_cfg, "the trained model file (data/06_models/model.pt)")
    return export_stage(method, input_cfg, manifest, data_cfg.root, params, data_cfg.limits)
