"""Cars196 (Stanford Cars) in either distributed form.

1. ``car_ims/*.jpg`` + ``cars_annos.mat`` (struct ``annotations``: ``relative_im_path``, ``class`` 1–196,
   ``test`` = the classification split, ignored; plus ``class_names``).
2. The devkit form: ``cars_train/``, ``cars_test/``, ``devkit/cars_meta.mat`` (``class_names``),
   ``cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (struct ``annotations``: ``fname``,
   ``class``); both parts are merged and split by class.

Zero-shot protocol: classes 1–98 train, 99–196 test (the first half of the classes). With ``bbox``
(``data.bbox: crop``; ``auto`` leaves them out, as the seed papers train), the annotations' ``bbox_x1 … bbox_y2``
(1-based, inclusive) give each image's box.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from deepmetric.data.readers.base import DATASETS, LAYOUTS, DatasetInfo, ReadOptions
from deepmetric.data.readers.common import (
    BBOX_COLUMNS,
    DatasetLayoutError,
    is_appledouble,
    require_file,
    zero_shot_split,
)


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True)
    except Exception as e:  # scipy raises ValueError/TypeError/... for corrupt files
        raise DatasetLayoutError(f"{path}: cannot read MATLAB file ({type(e).__name__}: {e})") from None


def _records(mat: dict, path: Path, fields: tuple[str, ...]) -> dict[str, list]:
    if "annotations" not in mat:
        raise DatasetLayoutError(f"{path}: no 'annotations' struct array")
    ann = np.atleast_1d(mat["annotations"])
    names = ann.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        hint = ""
        if "class" in missing and path.name == "cars_test_annos.mat":
            hint = " (this is the unlabelled test file: use cars_test_annos_withlabels.mat)"
        raise DatasetLayoutError(f"{path}: annotations lack field(s) {', '.join(missing)}{hint}")
    return {f: [ann[i][f] for i in range(len(ann))] for f in fields}


def _class_names(mat: dict, path: Path) -> list[str]:
    if "class_names" not in mat:
        raise DatasetLayoutError(f"{path}: no 'class_names' array")
    return [str(n).strip() for n in np.atleast_1d(mat["class_names"])]


def _scalar_int(v, where: str) -> int:
    try:
        return int(np.asarray(v).item())
    except (ValueError, TypeError):
        raise DatasetLayoutError(f"{where}: expected an integer class, got {v!r}") from None


_BOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _box(rec: dict[str, list], i: int, where: str) -> tuple[float, float, float, float]:
    """The i-th annotation's box as (x_1, y_1, x_2, y_2), from MATLAB's 1-based inclusive corners."""
    x1, y1, x2, y2 = (_scalar_int(rec[f][i], where) for f in _BOX_FIELDS)
    return float(x1 - 1), float(y1 - 1), float(x2), float(y2)


@LAYOUTS.register("cars196", kind="distributed", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "cars196") -> pd.DataFrame:
    root = Path(root)
    rows: list[tuple] = []
    boxes = _BOX_FIELDS if options.bbox else ()
    if (root / "cars_annos.mat").is_file():
        path = root / "cars_annos.mat"
        mat = _loadmat(path)
        names = _class_names(mat, path)
        rec = _records(mat, path, ("relative_im_path", "class", *boxes))
        for i, (rel, cls) in enumerate(zip(rec["relative_im_path"], rec["class"])):
            box = _box(rec, i, str(path)) if boxes else ()
            rows.append((str(rel).replace("\\", "/"), _scalar_int(cls, str(path)), *box))
    else:
        meta = require_file(root, "devkit/cars_meta.mat", "cars_meta.mat", what="Cars196 layout "
                            "(neither cars_annos.mat nor the devkit's cars_meta.mat found)")
        names = _class_names(_loadmat(meta), meta)
        for folder, annos in (("cars_train", "cars_train_annos.mat"),
                              ("cars_test", "cars_test_annos_withlabels.mat")):
            path = require_file(root, annos, f"devkit/{annos}", what="Cars196 devkit layout")
            rec = _records(_loadmat(path), path, ("fname", "class", *boxes))
            for i, (fname, cls) in enumerate(zip(rec["fname"], rec["class"])):
                box = _box(rec, i, str(path)) if boxes else ()
                rows.append((f"{folder}/{str(fname)}", _scalar_int(cls, str(path)), *box))
    rows = [r for r in rows if not is_appledouble(r[0])]
    if not rows:
        raise DatasetLayoutError(f"{root}: the Cars196 annotations list no images")
    df = pd.DataFrame(rows, columns=["path", "label", *(BBOX_COLUMNS if boxes else ())])
    bad = sorted({lab for lab in df["label"] if not 1 <= lab <= len(names)})
    if bad:
        raise DatasetLayoutError(f"{root}: class ids {bad[:5]} have no entry in class_names ({len(names)} names)")
    df["class_name"] = [names[lab - 1] for lab in df["label"]]
    return zero_shot_split(df, options.val_classes, dataset)


DATASETS.add(
    "cars196",
    DatasetInfo(layout="cars196", recall_ks=(1, 2, 4, 8), num_images=16185, num_classes=196, num_train_classes=98,
                num_test_classes=98),
    kind="benchmark",
    doc="docs/datasets.md",
)
