"""Read manifest images through the one evaluation transform (`open_image` + `eval_image`) as uint8 NHWC."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.data.images import DEFAULT_MAX_ASPECT_RATIO, safe_join
from deepmetric.data.transforms import eval_image, load_eval_image


def eval_array(img, spec: Any) -> np.ndarray:
    """One decoded RGB image → ``uint8 [crop, crop, 3]`` (the evaluation transform)."""
    return eval_image(img, spec)


def load_batch(root: str | os.PathLike[str], paths: Sequence[str], spec: Any, max_pixels: int,
               max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO) -> np.ndarray:
    """Manifest paths (relative to ``root``) → ``uint8 [N, crop, crop, 3]``."""
    crop = int(spec.crop)
    out = np.empty((len(paths), crop, crop, 3), dtype=np.uint8)
    for i, rel in enumerate(paths):
        out[i] = load_eval_image(safe_join(root, rel), spec, max_pixels, max_aspect_ratio)
    return out


def iter_batches(
    root: str | os.PathLike[str], paths: Sequence[str], spec: Any, max_pixels: int, batch_size: int,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), batch_size):
        yield load_batch(root, paths[start : start + batch_size], spec, max_pixels, max_aspect_ratio)


def test_rows(manifest: pd.DataFrame, roles: Sequence[str] | None = None) -> pd.DataFrame:
    """Test-split rows (optionally only these roles), in manifest order, index reset."""
    missing = {"path", "label", "split"} - set(manifest.columns)
    if missing:
        raise ValueError(f"the validated manifest lacks columns {sorted(missing)}")
    rows = manifest[manifest["split"] == "test"]
    if roles is not None and "role" in rows.columns:
        rows = rows[rows["role"].isin(list(roles))]
    if rows.empty:
        what = "test-split rows" + (f" with role in {list(roles)}" if roles is not None else "")
        raise ValueError(f"the validated manifest has no {what}")
    return rows.reset_index(drop=True)


def spaced_subset(rows: pd.DataFrame, limit: int) -> pd.DataFrame:
    """At most ``limit`` rows, evenly spaced over the table (deterministic, keeps every class represented
    when classes are contiguous)."""
    if len(rows) <= limit:
        return rows
    idx = np.linspace(0, len(rows) - 1, num=limit).round().astype(int)
    return rows.iloc[np.unique(idx)].reset_index(drop=True)
