"""The two registries of the data side: *layouts* (how a dataset's files lie on disk → the function that reads
them) and *datasets* (what a dataset is: the layout it comes in, its Recall@K protocol, its published counts).

A reader module registers its layout in `LAYOUTS` and the datasets distributed in it in `DATASETS`; the built-in
glyph set is a dataset in CUB's layout. A layout is a benchmark's own (`kind="distributed"`: CUB's listing files,
SOP's `Ebay_*.txt`, …) or a generic one for a team's own images (`kind="generic"`: `folder`, `table`).
`data.dataset` is a name in `DATASETS` or, read in a generic layout, the name of a catalogue of your own
(:func:`dataset_info` gives it the catalogue defaults); everything that lists dataset names (validation's known
counts, the evaluation protocol, the presets, the docs tests) reads the registry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from deepmetric.registry import Registry


@dataclass(frozen=True)
class ReadOptions:
    """What a reader is told besides the folder (from the ``data`` parameters, `deepmetric.data.config`)."""

    # The validation slice of the training classes (fraction or count): the benchmarks take the last classes by
    # label, a catalogue the classes its hash picks.
    val_classes: float = 0.0
    # A catalogue given without a split: the test classes (fraction or count), chosen by a seeded hash of the
    # class name (`data.split`).
    test_classes: float = 0.5
    split_seed: int = 0
    # The table layout's CSV / Parquet file (relative paths are under the root).
    table: str | None = None
    # Read the bounding boxes where the layout has them (`data.bbox` resolved).
    bbox: bool = False


class LayoutReader(Protocol):
    def __call__(self, root: str | os.PathLike[str], options: ReadOptions = ..., dataset: str = ...) -> pd.DataFrame:
        """The reader table (``READER_COLUMNS``, then those of ``OPTIONAL_COLUMNS`` it has) of the dataset at
        ``root``, its `dataset` column set to ``dataset``. What it skipped on purpose (hidden files, …) it may
        count in ``df.attrs["skipped"]`` (``{reason: count}``), which ingest copies into its report."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its layout and what the zero-shot protocol needs to know."""

    layout: str  # a name in LAYOUTS
    recall_ks: tuple[int, ...]
    # Published figures of the distributed dataset (None where not fixed, e.g. the generated glyph set); validation
    # compares a manifest with them (`validate.known_counts`).
    num_images: int | None = None
    num_classes: int | None = None
    num_train_classes: int | None = None
    num_test_classes: int | None = None
    # In-Shop: queries are searched against a separate gallery.
    separate_gallery: bool = False


# layout name → reader (metadata: `kind`, "distributed" or "generic"; `doc`, where the layout is described)
LAYOUTS: Registry[LayoutReader] = Registry("layout", required=("kind", "doc"))
# `data.dataset` name → DatasetInfo (metadata: `kind`, "benchmark" (published, with known counts) or "builtin";
# `doc`, the page with its row)
DATASETS: Registry[DatasetInfo] = Registry("dataset", required=("kind", "doc"))

#: Recall@K of a catalogue of your own (a name not in DATASETS): no published counts, queries against the rest.
CATALOGUE_RECALL_KS: tuple[int, ...] = (1, 2, 4, 8)


def generic_layouts() -> list[str]:
    """The layouts that read a team's own images (``folder``, ``table``)."""
    return LAYOUTS.names(kind="generic")


def dataset_info(name: str) -> DatasetInfo:
    """The registered dataset ``name``, or — a catalogue of your own — one with no published counts, Recall@K
    at :data:`CATALOGUE_RECALL_KS` and the query/gallery roles its manifest gives."""
    info = DATASETS.get(name)
    return info if info is not None else DatasetInfo(layout="", recall_ks=CATALOGUE_RECALL_KS)
