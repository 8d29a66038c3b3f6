"""Read manifest images through the one evaluation transform (`open_image` + `eval_image`) as uint8 NHWC, each cut
to its bounding box first where the manifest gives one."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.data.contract import Box, boxes_of
from deepmetric.data.images import ImageLimits, safe_join
from deepmetric.data.transforms import load_eval_image


def load_batch(root: str | os.PathLike[str], paths: Sequence[str], spec: Any,
               limits: ImageLimits, boxes: Sequence[Box | None] | None = None) -> np.ndarray:
    """Manifest paths (relative to ``root``) → ``uint8 [N, crop, crop, 3]``, decoded under ``limits``, each cut to
    its box in ``boxes`` (None: whole images)."""
    crop = int(spec.crop)
    out = np.empty((len(paths), crop, crop, 3), dtype=np.uint8)
    for i, rel in enumerate(paths):
        out[i] = load_eval_image(safe_join(root, rel), spec, limits=limits, box=None if boxes is None else boxes[i])
    return out


def iter_batches(
    root: str | os.PathLike[str], paths: Sequence[str], spec: Any, limits: ImageLimits, batch_size: int,
    boxes: Sequence[Box | None] | None = None,
) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), batch_size):
        yield load_batch(root, paths[start : start + batch_size], spec, limits,
                         None if boxes is None else boxes[start : start + batch_size])


def row_batches(root: str | os.PathLike[str], rows: pd.DataFrame, spec: Any, limits: ImageLimits,
                batch_size: int) -> Iterator[np.ndarray]:
    """:func:`iter_batches` over manifest rows: their paths, cut to their boxes where they have them."""
    return iter_batches(root, list(rows["path"]), spec, limits, batch_size, boxes_of(rows))


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
