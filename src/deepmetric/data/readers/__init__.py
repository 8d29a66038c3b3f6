"""One reader per distributed layout; all return the same table (see ``READER_COLUMNS``).

``read_dataset(name, root, params)`` → ``DataFrame[path, label, class_name, split, role, dataset]``; ingest adds
``width, height, sha256`` (``deepmetric.data.manifest``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from deepmetric.data.readers import cars196, cub, inshop, sop
from deepmetric.data.readers.common import READER_COLUMNS, DatasetLayoutError

READERS: dict[str, Callable[..., pd.DataFrame]] = {
    "glyphs": cub.read,  # the built-in set is written in CUB's layout
    "cub": cub.read,
    "cars196": cars196.read,
    "sop": sop.read,
    "inshop": inshop.read,
}

__all__ = ["READERS", "READER_COLUMNS", "DatasetLayoutError", "read_dataset"]


def read_dataset(
    name: str, root: str | os.PathLike[str], params: Mapping[str, Any] | Any | None = None
) -> pd.DataFrame:
    """Read the dataset ``name`` (glyphs, cub, cars196, sop, inshop) unpacked at ``root``.

    ``params``: the ``data`` parameters (mapping or ``DataParams``); only ``val_classes`` is used here.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(READERS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} does not exist or is not a folder (parameter data.root)")
    if params is None:
        val_classes = 0.0
    elif isinstance(params, Mapping):
        val_classes = float(params.get("val_classes", 0.0) or 0.0)
    else:
        val_classes = float(getattr(params, "val_classes", 0.0) or 0.0)
    return READERS[name](root, val_classes=val_classes, dataset=name)
