"""Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` with the header
"image_id class_id super_class_id path" (path relative to the root, e.g. ``bicycle_final/111085122871_0.JPG``).
Train file → train classes (11,318), test file → test classes (11,316). ``category``: the product's category
(the folder, e.g. ``bicycle``: SOP's 12 super-classes)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from deepmetric.data.readers.base import DATASETS, LAYOUTS, DatasetInfo, ReadOptions
from deepmetric.data.readers.common import DatasetLayoutError, assign_val, finish, is_appledouble, require_file

HEADER = ["image_id", "class_id", "super_class_id", "path"]


def _read_list(path: Path) -> pd.DataFrame:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split() != HEADER:
        raise DatasetLayoutError(f"{path}: expected the header {' '.join(HEADER)!r} on line 1")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise DatasetLayoutError(f"{path}:{n}: expected 4 fields, got {line!r}")
        try:
            rows.append((parts[3], int(parts[1])))
        except ValueError:
            raise DatasetLayoutError(f"{path}:{n}: class_id is not an integer: {line!r}") from None
    return pd.DataFrame(rows, columns=["path", "label"])


@LAYOUTS.register("sop", kind="distributed", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "sop") -> pd.DataFrame:
    root = Path(root)
    parts = []
    for split, name in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        df = _read_list(require_file(root, name, what="Stanford Online Products layout"))
        df["split"] = split
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    df = df[~df["path"].map(is_appledouble)].copy()
    if df.empty:
        raise DatasetLayoutError(f"{root}: Ebay_train.txt and Ebay_test.txt list no images")
    # class_name: category folder + product id, e.g. "bicycle/111085122871".
    category = df["path"].str.split("/").str[0].str.removesuffix("_final")
    product = df["path"].str.split("/").str[-1].str.rsplit("_", n=1).str[0]
    df["class_name"] = category + "/" + product
    df["category"] = category
    df["role"] = "both"
    return finish(assign_val(df, options.val_classes), dataset)


DATASETS.add(
    "sop",
    DatasetInfo(layout="sop", recall_ks=(1, 10, 100, 1000), num_images=120053, num_classes=22634,
                num_train_classes=11318, num_test_classes=11316),
    kind="benchmark",
    doc="docs/datasets.md",
)
