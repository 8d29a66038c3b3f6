"""The two registries of the data side: *layouts* (how a dataset's files lie on disk → the function that reads
them) and *datasets* (what a dataset is: the layout it comes in, its Recall@K protocol, its published counts).

A reader module registers its layout in `LAYOUTS` and the datasets distributed in it in `DATASETS`; the built-in
glyph set is a dataset in CUB's layout. `data.dataset` is checked against `DATASETS`, and everything that lists
dataset names (validation's known counts, the evaluation protocol, the presets, the docs tests) reads it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import pandas as pd

from deepmetric.registry import Registry


class LayoutReader(Protocol):
    def __call__(self, root: str | os.PathLike[str], val_classes: float = 0.0, dataset: str = ...) -> pd.DataFrame:
        """The reader table (``READER_COLUMNS``) of the dataset unpacked at ``root``, its `dataset` column set to
        ``dataset``, the last ``val_classes`` training classes (fraction or count) moved to split ``val``."""


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


# layout name → reader (metadata: `doc`, where the layout is described)
LAYOUTS: Registry[LayoutReader] = Registry("layout", required=("doc",))
# `data.dataset` name → DatasetInfo (metadata: `kind`, "benchmark" (published, with known counts) or "builtin";
# `doc`, the page with its row)
DATASETS: Registry[DatasetInfo] = Registry("dataset", required=("kind", "doc"))
