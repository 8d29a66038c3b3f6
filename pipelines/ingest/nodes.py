"""Thin node: ``data`` parameters → reader rows → decoded, hashed manifest."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.data.manifest import build_manifest
from deepmetric.data.readers import read_dataset


def ingest(data: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    cfg = parse_params(DataParams, data, "data")
    records = read_dataset(cfg.dataset, cfg.root, cfg)
    manifest, report = build_manifest(records, cfg.root, bad_files=cfg.bad_files, limits=cfg.limits,
                                      workers=cfg.workers)
    return manifest, {"layout": cfg.layout_name, "bbox": "crop" if cfg.crop_boxes else "full", **report}
