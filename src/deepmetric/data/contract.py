"""The data contract: the manifest every reader writes and every later stage reads.

One row per image. ``path`` is relative to the dataset root (``data.root``); nothing after ``ingest``
touches the dataset folder except through this table. Its ``dataset`` column is one of ``DATASETS``: the
registry the reader modules fill (`deepmetric.data.readers`), name → ``DatasetInfo`` (layout, Recall@K Ks,
published counts).
"""

from __future__ import annotations

from deepmetric.data.readers import DATASETS, DatasetInfo

__all__ = ["DATASETS", "MANIFEST_COLUMNS", "ROLES", "SPLITS", "DatasetInfo"]

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",  # str, relative to the dataset root, POSIX separators
    "label",  # int, class id (unique across splits)
    "class_name",  # str
    "split",  # one of SPLITS
    "role",  # one of ROLES
    "width",  # int, pixels, after EXIF orientation
    "height",  # int
    "sha256",  # hex digest of the file bytes
    "dataset",  # one of DATASETS
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
ROLES: tuple[str, ...] = ("query", "gallery", "both")
