"""In-Shop Clothes Retrieval (DeepFashion): ``Eval/list_eval_partition.txt`` — line 1 the image count, line 2
the header "image_name item_id evaluation_status", then "img/WOMEN/.../id_00000002/02_1_front.jpg id_00000002
train" with status train / query / gallery. Class = item id (its number is the label). Train rows get role
``both``; test rows keep their ``query`` / ``gallery`` role (queries are searched against the gallery only).
Images are expected under ``img/`` (``Img/img.zip`` unpacked); ``Img/img/`` is accepted too."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from deepmetric.data.readers.base import DATASETS, LAYOUTS, DatasetInfo, ReadOptions
from deepmetric.data.readers.common import DatasetLayoutError, assign_val, finish, is_appledouble, require_file

HEADER = ["image_name", "item_id", "evaluation_status"]
STATUS_SPLIT_ROLE = {"train": ("train", "both"), "query": ("test", "query"), "gallery": ("test", "gallery")}


@LAYOUTS.register("inshop", kind="distributed", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "inshop") -> pd.DataFrame:
    root = Path(root)
    path = require_file(root, "Eval/list_eval_partition.txt", "list_eval_partition.txt",
                        what="In-Shop layout")
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) < 2 or lines[1].split() != HEADER:
        raise DatasetLayoutError(f"{path}: expected the image count on line 1 and the header "
                                 f"{' '.join(HEADER)!r} on line 2")
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DatasetLayoutError(f"{path}:1: expected the image count, got {lines[0]!r}") from None
    prefix = ""
    if not (root / "img").is_dir() and (root / "Img" / "img").is_dir():
        prefix = "Img/"
    rows = []
    for n, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in STATUS_SPLIT_ROLE:
            raise DatasetLayoutError(f"{path}:{n}: expected 'image_name item_id train|query|gallery', "
                                     f"got {line!r}")
        name, item, status = parts
        digits = item.removeprefix("id_")
        if not digits.isdigit():
            raise DatasetLayoutError(f"{path}:{n}: item id {item!r} is not of the form id_<number>")
        split, role = STATUS_SPLIT_ROLE[status]
        rows.append((prefix + name, int(digits), item, split, role))
    if len(rows) != declared:
        raise DatasetLayoutError(f"{path}: line 1 declares {declared} images but {len(rows)} are listed "
                                 "(truncated or edited file?)")
    df = pd.DataFrame(rows, columns=["path", "label", "class_name", "split", "role"])
    df = df[~df["path"].map(is_appledouble)].copy()
    return finish(assign_val(df, options.val_classes), dataset)


DATASETS.add(
    "inshop",
    DatasetInfo(layout="inshop", recall_ks=(1, 10, 20, 30, 40, 50), num_images=52712, num_classes=7982,
                num_train_classes=3997, num_test_classes=3985, separate_gallery=True),
    kind="benchmark",
    doc="docs/datasets.md",
)
