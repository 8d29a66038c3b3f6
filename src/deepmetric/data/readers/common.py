"""Helpers shared by the readers: the output frame, the class splits and the validation slice."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

READER_COLUMNS: tuple[str, ...] = ("path", "label", "class_name", "split", "role", "dataset")
#: A bounding box, in pixels of the image as displayed (after EXIF orientation): left, top, right, bottom, the
#: right/bottom edges exclusive (open-metric-learning's column names). All four or none are set in a row.
BBOX_COLUMNS: tuple[str, ...] = ("x_1", "y_1", "x_2", "y_2")
#: Columns a reader adds only when it has them: ``category`` (a super-class, text) and the box.
OPTIONAL_COLUMNS: tuple[str, ...] = ("category", *BBOX_COLUMNS)


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


def zero_shot_split(df: pd.DataFrame, val_classes: float, dataset: str) -> pd.DataFrame:
    """The benchmarks' zero-shot protocol on a reader's rows (CUB, Cars196): the first half of the classes train
    (the last ``val_classes`` of them validate), the second half test, every image both query and gallery;
    the rows finished in contract order."""
    train = first_half_train(df["label"])
    df["split"] = ["train" if lab in train else "test" for lab in df["label"]]
    df["role"] = "both"
    return finish(assign_val(df, val_classes), dataset)


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


# --- the class split of a catalogue: by a hash of the class name, not by its position -----------------------------

def class_hash(name: str, seed: int, purpose: str = "test") -> float:
    """A number in [0, 1) fixed by ``(seed, purpose, class name)`` alone: a class keeps it whatever other classes
    exist. ``purpose`` draws independent numbers for the test split and the val slice."""
    digest = hashlib.sha256(f"{int(seed)}\x00{purpose}\x00{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _take(u: np.ndarray, share: float, what: str, rest: str) -> np.ndarray:
    """Mask of the classes a ``share`` takes: a fraction takes every class whose hash is below it (at least one and
    never all of two or more; none of one); a whole number takes exactly that many, lowest hashes first, and must
    leave one for ``rest``."""
    n = len(u)
    if share <= 0 or n == 0:
        return np.zeros(n, dtype=bool)
    if share >= 1:
        k = int(share)
        mask = np.zeros(n, dtype=bool)
        mask[np.argsort(u, kind="stable")[:k]] = True
    else:
        mask = u < share
        if n == 1:  # one class: it stays with the rest
            mask[:] = False
        elif not mask.any():  # a tiny catalogue: the class nearest the slice goes in, or the farthest stays out
            mask[int(np.argmin(u))] = True
        elif mask.all():
            mask[int(np.argmax(u))] = False
    if mask.all():
        raise ValueError(f"{what}={share:g} takes all {n} classes; leave at least one class {rest}")
    return mask


def hash_split(class_names: Sequence[str], test_classes: float, val_classes: float, seed: int) -> list[str]:
    """The split of each class of a catalogue given without one: ``test`` for ``test_classes`` of the classes,
    ``val`` for ``val_classes`` of the remaining training classes (each a fraction or a count), ``train`` for
    the rest.

    Each class's own hash (:func:`class_hash`) decides, not its position: with fractions, a class goes to test
    when its hash is below ``test_classes`` (and to val when its second hash is below ``val_classes``), so adding
    or removing classes never moves another one — a class trained on never becomes a test class. Counts are
    exact (lowest hashes first); adding classes can then move one class at the boundary."""
    names = list(class_names)
    u = np.array([class_hash(c, seed) for c in names], dtype=np.float64)
    test = _take(u, test_classes, "data.split.test_classes", "to train on")
    split = np.where(test, "test", "train").astype(object)
    train = np.flatnonzero(~test)
    val = train_val_slice([names[i] for i in train], val_classes, seed)
    split[[i for i in train if names[i] in val]] = "val"
    return [str(s) for s in split]


def train_val_slice(class_names: Sequence[str], val_classes: float, seed: int) -> set[str]:
    """The training classes of a catalogue that become ``val`` (``val_classes``: a fraction or a count of them),
    chosen by their hash like :func:`hash_split`."""
    names = list(class_names)
    u = np.array([class_hash(c, seed, "val") for c in names], dtype=np.float64)
    val = _take(u, val_classes, "data.val_classes", "to train on")
    return {c for c, v in zip(names, val) if v}


def finish(rows: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Typed columns in contract order (the optional ones after, when present), sorted deterministically."""
    df = rows.copy()
    df["dataset"] = dataset
    df["label"] = df["label"].astype("int64")
    for c in ("path", "class_name", "split", "role", "dataset"):
        df[c] = df[c].astype(str)
    if "category" in df:
        df["category"] = df["category"].astype(object)
    for c in BBOX_COLUMNS:
        if c in df:
            df[c] = df[c].astype("float64")
    df = df.loc[:, list(READER_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df]]
    order = {"train": 0, "val": 1, "test": 2}
    out = df.assign(_o=df["split"].map(order)).sort_values(["_o", "label", "path"], kind="stable")
    out = out.drop(columns="_o").reset_index(drop=True)
    out.attrs = dict(rows.attrs)
    return out
