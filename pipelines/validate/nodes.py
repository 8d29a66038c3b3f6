"""Two thin nodes: run the suite (report + data docs always written), then the gate that writes
``validated_manifest`` only when every check passed, and otherwise stops the run with the summary."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.validation import ValidateParams, ValidationFailed, validate_with_docs, warning_summary

log = logging.getLogger(__name__)


def run_validation(
    manifest: pd.DataFrame, data: dict[str, Any], validate: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    data_cfg = parse_params(DataParams, data, "data")
    cfg = parse_params(ValidateParams, validate, "validate")
    return validate_with_docs(manifest, data_cfg.root, data_cfg.dataset, cfg, limits=data_cfg.limits)


def gate(manifest: pd.DataFrame, report: dict[str, Any]) -> pd.DataFrame:
    if not report.get("success"):
        raise ValidationFailed(report)
    warned = warning_summary(report)
    if warned:
        log.warning(warned)
    return manifest
