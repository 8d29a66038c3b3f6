"""Dataset readers: one module per layout; all return the same table (see ``READER_COLUMNS``).

Each module registers its layout in `LAYOUTS` and the datasets that come in it in `DATASETS` (`base.py`); importing
this package imports every module in it, so a new layout or dataset is one module here plus its test and its row in
docs/datasets.md. ``read_dataset(name, root, params)`` → ``DataFrame[path, label, class_name, split, role,
dataset]`` (+ ``category``, ``x_1 … y_2`` where the layout has them); ingest adds ``width, height, sha256``
(``deepmetric.data.manifest``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from deepmetric.data.readers.base import (
    CATALOGUE_RECALL_KS, DATASETS, LAYOUTS, DatasetInfo, ReadOptions, dataset_info, generic_layouts,
)
from deepmetric.data.readers.common import BBOX_COLUMNS, OPTIONAL_COLUMNS, READER_COLUMNS, DatasetLayoutError

LAYOUTS.discover(__name__)  # imports every module; each registers its layout and the datasets in it

__all__ = [
    "BBOX_COLUMNS", "CATALOGUE_RECALL_KS", "DATASETS", "LAYOUTS", "OPTIONAL_COLUMNS", "READER_COLUMNS", "DatasetInfo",
    "DatasetLayoutError", "ReadOptions", "crops_boxes", "dataset_info", "generic_layouts", "read_dataset",
    "read_items", "resolve_layout",
]


def _get(params: Mapping[str, Any] | Any | None, key: str, default: Any = None) -> Any:
    if params is None:
        return default
    value = params.get(key, default) if isinstance(params, Mapping) else getattr(params, key, default)
    return default if value is None else value


def resolve_layout(name: str, layout: str | None = None) -> str:
    """The layout to read ``name`` in: ``layout`` when given (``data.layout``), else the registered dataset's own
    (an unregistered name without a layout fails, listing the datasets)."""
    if layout:
        LAYOUTS.check(layout, what="layout (data.layout)")
        return layout
    return DATASETS.lookup(name).layout


def crops_boxes(bbox: str, layout: str) -> bool:
    """``data.bbox`` resolved: ``crop`` / ``full``, or ``auto`` — crop to the boxes a catalogue gives (generic
    layouts), whole images for the benchmarks (their seed papers train on whole images)."""
    if bbox not in ("auto", "crop", "full"):
        raise ValueError(f"data.bbox must be auto, crop or full, got {bbox!r}")
    return bbox == "crop" or (bbox == "auto" and layout in generic_layouts())


def read_dataset(
    name: str, root: str | os.PathLike[str], params: Mapping[str, Any] | Any | None = None
) -> pd.DataFrame:
    """Read the dataset ``name`` at ``root`` in its layout (``params.layout``, else the registered dataset's).

    ``params``: the ``data`` parameters (mapping or ``DataParams``): ``layout``, ``val_classes``,
    ``split.test_classes`` / ``split.seed``, ``table``, ``bbox`` are used here.
    """
    layout = resolve_layout(name, _get(params, "layout"))
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder (parameter data.root)")
    split = _get(params, "split", {})
    options = ReadOptions(
        val_classes=float(_get(params, "val_classes", 0.0)),
        test_classes=float(_get(split, "test_classes", ReadOptions.test_classes)),
        split_seed=int(_get(split, "seed", ReadOptions.split_seed)),
        table=_get(params, "table"),
        bbox=crops_boxes(str(_get(params, "bbox", "auto")), layout),
    )
    return LAYOUTS[layout](root, options, dataset=name)


def read_items(source: str | os.PathLike[str], root: str | os.PathLike[str] | None = None,
               bbox: bool = True) -> tuple[pd.DataFrame, Path]:
    """The images to embed or search, from a folder (every image in it, the sub-folder as label) or a table
    (``path`` [, ``label``, ``class_name``, box]; paths relative to ``root``, by default the table's folder).
    Returns ``(items, root the paths are relative to)``."""
    from deepmetric.data.readers.folder import list_images
    from deepmetric.data.readers.table import list_table

    source = Path(source)
    if source.is_dir():
        if root is not None:
            raise DatasetLayoutError(f"{source} is a folder: its images are listed relative to it (no root to give)")
        return list_images(source), source
    if not source.exists():
        raise DatasetLayoutError(f"{source}: no such folder or table")
    base = Path(root) if root is not None else source.parent
    return list_table(source, base, bbox), base
