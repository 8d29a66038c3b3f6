"""Dataset readers: one module per distributed layout; all return the same table (see ``READER_COLUMNS``).

Each module registers its layout in `LAYOUTS` and the datasets that come in it in `DATASETS` (`base.py`); importing
this package imports every module in it, so a new layout or dataset is one module here plus its test and its row in
docs/datasets.md. ``read_dataset(name, root, params)`` → ``DataFrame[path, label, class_name, split, role,
dataset]``; ingest adds ``width, height, sha256`` (``deepmetric.data.manifest``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from deepmetric.data.readers.base import DATASETS, LAYOUTS, DatasetInfo
from deepmetric.data.readers.common import READER_COLUMNS, DatasetLayoutError

LAYOUTS.discover(__name__)  # imports every module; each registers its layout and the datasets in it

__all__ = ["DATASETS", "LAYOUTS", "READER_COLUMNS", "DatasetInfo", "DatasetLayoutError", "read_dataset"]


def read_dataset(
    name: str, root: str | os.PathLike[str], params: Mapping[str, Any] | Any | None = None
) -> pd.DataFrame:
    """Read the dataset ``name`` (a name in `DATASETS`) unpacked at ``root``, with its layout's reader.

    ``params``: the ``data`` parameters (mapping or ``DataParams``); only ``val_classes`` is used here.
    """
    info = DATASETS.lookup(name)
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder (parameter data.root)")
    if params is None:
        val_classes = 0.0
    elif isinstance(params, Mapping):
        val_classes = float(params.get("val_classes", 0.0) or 0.0)
    else:
        val_classes = float(getattr(params, "val_classes", 0.0) or 0.0)
    return LAYOUTS[info.layout](root, val_classes=val_classes, dataset=name)
