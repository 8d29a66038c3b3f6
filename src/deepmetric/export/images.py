"""Which manifest rows the export and index stages read (the test split, an evenly spaced subset); the batches
themselves come from `deepmetric.data.batches` (re-exported here)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from deepmetric.data.batches import iter_batches, load_batch, row_batches

__all__ = ["iter_batches", "load_batch", "row_batches", "spaced_subset", "test_rows"]


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
