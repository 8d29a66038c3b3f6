"""The data contract: the manifest every reader writes and every later stage reads.

One row per image. ``path`` is relative to the dataset root (``data.root``); nothing after ``ingest``
touches the dataset folder except through this table.
"""

from __future__ import annotations

from dataclasses import dataclass

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
DATASETS: tuple[str, ...] = ("glyphs", "cub", "cars196", "sop", "inshop")


@dataclass(frozen=True)
class DatasetInfo:
    """What the zero-shot protocol of a dataset needs to know."""

    name: str
    recall_ks: tuple[int, ...]
    # Known figures of the distributed dataset (None where not fixed, e.g. the generated glyph set).
    num_images: int | None = None
    num_classes: int | None = None
    num_train_classes: int | None = None
    num_test_classes: int | None = None
    # In-Shop: queries are searched against a separate gallery.
    separate_gallery: bool = False


DATASET_INFO: dict[str, DatasetInfo] = {
    "glyphs": DatasetInfo("glyphs", (1, 2, 4, 8)),
    "cub": DatasetInfo("cub", (1, 2, 4, 8), 11788, 200, 100, 100),
    "cars196": DatasetInfo("cars196", (1, 2, 4, 8), 16185, 196, 98, 98),
    "sop": DatasetInfo("sop", (1, 10, 100, 1000), 120053, 22634, 11318, 11316),
    "inshop": DatasetInfo("inshop", (1, 10, 20, 30, 40, 50), 52712, 7982, 3997, 3985, separate_gallery=True),
}
