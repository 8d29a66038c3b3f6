"""Helpers shared by the readers: the output frame, the class split and the validation slice."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

READER_COLUMNS: tuple[str, ...] = ("path", "label", "class_name", "split", "role", "dataset")


class DatasetLayoutError(ValueError):
    """The dataset folder does not look like the distributed layout (a listing file missing or malformed)."""


def require_file(root: Path, *candidates: str, what: str) -> Path:
    """The first of ``candidates`` (relative to ``root``) that exists, or a clear layout error."""
    for rel in candidates:
        p = root / rel
        if p.is_file():
            return p
    names = " or ".join(candidates)
    raise DatasetLayoutError(f"{what}: expected {names} under {root} (is data.root the unpacked folder?)")


def is_appledouble(path: str) -> bool:
    """macOS resource-fork junk (``._name``) found in some archives."""
    return Path(path).name.startswith("._") or "__MACOSX" in Path(path).parts


def first_half_train(labels: Iterable[int]) -> set[int]:
    """The zero-shot rule: the first half of the classes (by label) train, the rest test."""
    ordered = sorted(set(labels))
    return set(ordered[: math.ceil(len(ordered) / 2)])


def num_val_classes(val_classes: float, num_train: int) -> int:
    if val_classes < 1:
        n = int(round(val_classes * num_train))
        if val_classes > 0:
            n = max(n, 1)
    else:
        n = int(val_classes)
    if n >= num_train and num_train > 0 and n > 0:
        raise ValueError(
            f"data.val_classes={val_classes} takes {n} of the {num_train} training classes; "
            "leave at least one class to train on"
        )
    return n


def assign_val(df: pd.DataFrame, val_classes: float) -> pd.DataFrame:
    """Move the last ``val_classes`` training classes (by label; fraction or count) to split ``val``."""
    train_labels = sorted(df.loc[df["split"] == "train", "label"].unique())
    n = num_val_classes(val_classes, len(train_labels))
    if n:
        val = set(train_labels[-n:])
        df.loc[df["label"].isin(val) & (df["split"] == "train"), "split"] = "val"
    return df


def finish(rows: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Typed columns in contract order, sorted deterministically."""
    df = rows.copy()
    df["dataset"] = dataset
    df["label"] = df["label"].astype("int64")
    for c in ("path", "class_name", "split", "role", "dataset"):
        df[c] = df[c].astype(str)
    df = df.loc[:, list(READER_COLUMNS)]
    order = {"train": 0, "val": 1, "test": 2}
    df = df.assign(_o=df["split"].map(order)).sort_values(["_o", "label", "path"], kind="stable")
    return df.drop(columns="_o").reset_index(drop=True)
