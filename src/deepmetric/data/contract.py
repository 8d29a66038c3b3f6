"""The data contract: the manifest every reader writes and every later stage reads.

One row per image. ``path`` is relative to the dataset root (``data.root``); nothing after ``ingest``
touches the dataset folder except through this table. Its ``dataset`` column is one of ``DATASETS`` — the
registry the reader modules fill (`deepmetric.data.readers`), name → ``DatasetInfo`` (layout, Recall@K Ks,
published counts) — or the name of a catalogue of your own read in a generic layout (:func:`dataset_info`).

Optional columns, present only when a reader has them (a manifest without them is as valid as before):
``category`` (a super-class, text; per-category metrics) and a bounding box ``x_1, y_1, x_2, y_2`` (pixels of the
image as displayed, right/bottom exclusive; all four missing in a row = the whole image). Where a manifest has
boxes, every stage that reads its images crops to them (:func:`boxes_of`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from deepmetric.data.readers import (
    BBOX_COLUMNS, DATASETS, OPTIONAL_COLUMNS, DatasetInfo, dataset_info,
)

__all__ = [
    "BBOX_COLUMNS", "DATASETS", "MANIFEST_COLUMNS", "OPTIONAL_COLUMNS", "ROLES", "SPLITS", "Box", "DatasetInfo",
    "boxes_of", "dataset_info",
]

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",  # str, relative to the dataset root, POSIX separators
    "label",  # int, class id (unique across splits)
    "class_name",  # str
    "split",  # one of SPLITS
    "role",  # one of ROLES
    "width",  # int, pixels, after EXIF orientation
    "height",  # int
    "sha256",  # hex digest of the file bytes
    "dataset",  # one of DATASETS, or a catalogue's name
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
ROLES: tuple[str, ...] = ("query", "gallery", "both")

#: A bounding box ``(x_1, y_1, x_2, y_2)``.
Box = tuple[float, float, float, float]


def boxes_of(rows: pd.DataFrame) -> list[Box | None] | None:
    """Each row's box (None for a row without one), or None when the rows carry no box at all — what
    :class:`~deepmetric.data.dataset.ManifestImages`, the image cache and the ONNX-side loaders take as
    ``boxes``."""
    if not set(BBOX_COLUMNS) <= set(rows.columns):
        return None
    values: Sequence = rows[list(BBOX_COLUMNS)].astype("float64").itertuples(index=False, name=None)
    out = [None if any(math.isnan(v) for v in box) else tuple(float(v) for v in box) for box in values]
    return out if any(b is not None for b in out) else None
