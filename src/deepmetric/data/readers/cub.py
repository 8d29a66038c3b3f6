"""CUB-200-2011 layout (also the built-in glyph set's layout).

``images.txt`` ("image_id relative/path"), ``image_class_labels.txt`` ("image_id class_id"), ``classes.txt``
("class_id NNN.Class_Name"), paths relative to ``images/``. Zero-shot protocol: the first half of the classes
(CUB: 1–100) train, the second half (101–200) test; ``train_test_split.txt`` (the classification split) is
deliberately ignored. AppleDouble ``._*`` entries are skipped. With ``bbox`` (``data.bbox: crop``; the seed papers
train on whole images, so ``auto`` leaves them out), ``bounding_boxes.txt`` ("image_id x y width height") gives
each image's box.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from deepmetric.data.readers.base import DATASETS, LAYOUTS, DatasetInfo, ReadOptions
from deepmetric.data.readers.common import (
    BBOX_COLUMNS,
    DatasetLayoutError,
    is_appledouble,
    require_file,
    zero_shot_split,
)


def _pairs(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetLayoutError(f"{path}:{n}: expected two fields, got {line!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def _int(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetLayoutError(f"{where}: expected an integer id, got {value!r}") from None


def _boxes(path: Path) -> dict[int, tuple[float, float, float, float]]:
    """``bounding_boxes.txt``: image id → (x_1, y_1, x_2, y_2) from "image_id x y width height"."""
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            image_id, x, y, w, h = int(parts[0]), *map(float, parts[1:])
        except ValueError:
            raise DatasetLayoutError(f"{path}:{n}: expected 'image_id x y width height', got {line!r}") from None
        out[image_id] = (x, y, x + w, y + h)
    return out


@LAYOUTS.register("cub", kind="distributed", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "cub") -> pd.DataFrame:
    root = Path(root)
    images_txt = require_file(root, "images.txt", what="CUB layout")
    labels_txt = require_file(root, "image_class_labels.txt", what="CUB layout")
    classes_txt = require_file(root, "classes.txt", what="CUB layout")

    images = {_int(i, str(images_txt)): p for i, p in _pairs(images_txt)}
    labels = {_int(i, str(labels_txt)): _int(c, str(labels_txt)) for i, c in _pairs(labels_txt)}
    class_names = {}
    for c, name in _pairs(classes_txt):
        # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
        prefix, dot, rest = name.partition(".")
        class_names[_int(c, str(classes_txt))] = rest if dot and prefix.isdigit() else name

    rows = []
    for image_id, rel in images.items():
        if is_appledouble(rel):
            continue
        if image_id not in labels:
            raise DatasetLayoutError(f"{labels_txt}: no class for image {image_id} ({rel}) listed in images.txt")
        label = labels[image_id]
        if label not in class_names:
            raise DatasetLayoutError(f"{classes_txt}: class {label} of image {image_id} is not listed")
        rows.append(("images/" + rel.replace("\\", "/"), label, class_names[label], image_id))
    if not rows:
        raise DatasetLayoutError(f"{images_txt} lists no images")
    df = pd.DataFrame(rows, columns=["path", "label", "class_name", "image_id"])
    if options.bbox:
        boxes_txt = require_file(root, "bounding_boxes.txt", what="CUB boxes (data.bbox: crop)")
        boxes = _boxes(boxes_txt)
        missing = [i for i in df["image_id"] if i not in boxes]
        if missing:
            raise DatasetLayoutError(f"{boxes_txt}: no box for image(s) {missing[:5]} listed in images.txt")
        df[list(BBOX_COLUMNS)] = [boxes[i] for i in df["image_id"]]
    df = df.drop(columns="image_id")
    return zero_shot_split(df, options.val_classes, dataset)


DATASETS.add(
    "cub",
    DatasetInfo(layout="cub", recall_ks=(1, 2, 4, 8), num_images=11788, num_classes=200, num_train_classes=100,
                num_test_classes=100),
    kind="benchmark",
    doc="docs/datasets.md",
)
