"""The ``folder`` layout: a team's own images, one sub-folder per class.

    root/<class>/<image>                                  no split: split by class (data.split, data.val_classes)
    root/train/<class>/…, root/test/<class>/… [val/…]     split folders
    root/test/query/<class>/…, root/test/gallery/<class>/…   queries searched against a separate gallery

The class is the image's folder relative to its split (or query/gallery) folder, so nested classes are allowed
(``shoes/sneakers/air-max-90``); labels number the class names in sorted order. Hidden files and folders
(``.name``, ``__MACOSX``) and files that are not images by their extension are skipped and counted
(``attrs["skipped"]``, copied into the ingest report); whether an image decodes is ingest's business
(``data.bad_files``).

Refused, naming the folder: images lying directly in the root or a split folder (no class), a class folder with no
image, split folders mixed with class folders, query/gallery folders anywhere but under ``test/`` or mixed with
class folders, a class in two splits, fewer than two classes.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from deepmetric.data.readers.base import LAYOUTS, ReadOptions
from deepmetric.data.readers.common import DatasetLayoutError, finish, hash_split, train_val_slice

#: Files read as images, by extension (case-insensitive); others are skipped and counted.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".ppm", ".pgm", ".pbm", ".pnm"})
SPLIT_FOLDERS = ("train", "val", "test")
ROLE_FOLDERS = ("query", "gallery")
_MAX_NAMED = 5


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _named(items: list[str]) -> str:
    more = f" and {len(items) - _MAX_NAMED} more" if len(items) > _MAX_NAMED else ""
    return ", ".join(items[:_MAX_NAMED]) + more


def _entries(folder: Path, skipped: Counter) -> tuple[list[str], list[str]]:
    """(sub-folder names, image file names) of ``folder``, sorted; hidden entries and non-images counted."""
    dirs, images = [], []
    with os.scandir(folder) as it:
        for e in it:
            if is_hidden(e.name):
                skipped["hidden"] += 1
            elif e.is_dir():
                dirs.append(e.name)
            elif not e.is_file():
                skipped["not a regular file"] += 1
            elif is_image_name(e.name):
                images.append(e.name)
            else:
                skipped["not an image (extension)"] += 1
    return sorted(dirs), sorted(images)


def _refuse_loose(base: Path, root: Path, images: list[str]) -> None:
    if images:
        where = base.relative_to(root).as_posix() + "/" if base != root else "the root"
        raise DatasetLayoutError(
            f"{base}: {len(images)} image(s) directly in {where} ({_named(images)}); the folder layout wants each "
            "class's images in a folder of its own (root/<class>/<image>)")


def _classes(base: Path, root: Path, dirs: list[str], skipped: Counter) -> dict[str, list[str]]:
    """Class name (folder relative to ``base``) → image paths relative to ``root``, for every folder under
    ``base`` (whose sub-folders are ``dirs``) holding images. A folder with neither images nor sub-folders is
    refused."""
    out: dict[str, list[str]] = {}
    empty: list[str] = []
    stack = [base / d for d in reversed(dirs)]
    while stack:
        folder = stack.pop()
        sub, images = _entries(folder, skipped)
        rel = folder.relative_to(root).as_posix()
        if images:
            out[folder.relative_to(base).as_posix()] = [f"{rel}/{name}" for name in images]
        elif not sub:
            empty.append(rel + "/")
        stack.extend(folder / d for d in reversed(sub))
    if empty:
        raise DatasetLayoutError(f"{root}: class folder(s) with no image: {_named(empty)} (remove them, or add images; "
                                 f"image files are {', '.join(sorted(IMAGE_SUFFIXES))})")
    if not out:
        raise DatasetLayoutError(f"{base}: no class folder with images under it")
    return out


def _split_rows(root: Path, split: str, skipped: Counter) -> list[tuple[str, str, str, str]]:
    """(path, class, split, role) rows of one split folder, with its query/gallery folders if it has them."""
    base = root / split
    dirs, images = _entries(base, skipped)
    _refuse_loose(base, root, images)
    roles = [d for d in dirs if d in ROLE_FOLDERS]
    if not roles:
        return [(p, c, split, "both") for c, paths in _classes(base, root, dirs, skipped).items() for p in paths]
    if split != "test":
        raise DatasetLayoutError(f"{base}: query/gallery folders belong under test/ only (training and validation "
                                 "classes are searched among themselves)")
    if sorted(dirs) != sorted(ROLE_FOLDERS):
        extra = [d + "/" for d in dirs if d not in ROLE_FOLDERS]
        missing = [d + "/" for d in ROLE_FOLDERS if d not in dirs]
        what = f"lacks {', '.join(missing)}" if missing else f"mixes them with class folders ({_named(extra)})"
        raise DatasetLayoutError(f"{base}: has {', '.join(r + '/' for r in roles)} but {what}; a test split with a "
                                 "separate gallery is test/query/<class>/… and test/gallery/<class>/… only")
    rows = []
    for role in ROLE_FOLDERS:
        sub, images = _entries(base / role, skipped)
        _refuse_loose(base / role, root, images)
        rows += [(p, c, split, role) for c, paths in _classes(base / role, root, sub, skipped).items() for p in paths]
    return rows


@LAYOUTS.register("folder", kind="generic", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "catalogue") -> pd.DataFrame:
    root = Path(root)
    skipped: Counter = Counter()
    dirs, images = _entries(root, skipped)
    _refuse_loose(root, root, images)
    splits = [d for d in dirs if d in SPLIT_FOLDERS]
    if splits and len(splits) != len(dirs):
        others = [d + "/" for d in dirs if d not in SPLIT_FOLDERS]
        raise DatasetLayoutError(
            f"{root}: split folders ({', '.join(s + '/' for s in splits)}) mixed with other folders "
            f"({_named(others)}); put every class under a split folder, or use no split folders at all")
    has_splits = bool(splits)
    if has_splits:
        rows = [r for split in dirs for r in _split_rows(root, split, skipped)]
    else:
        rows = [(p, c, "", "both") for c, paths in _classes(root, root, dirs, skipped).items() for p in paths]
    df = pd.DataFrame(rows, columns=["path", "class_name", "split", "role"])
    classes = sorted(df["class_name"].unique())
    if len(classes) < 2:
        found = f"1 class folder ({classes[0]}/)" if classes else "no image"
        raise DatasetLayoutError(f"{root}: found {found}; metric learning needs at least 2 classes "
                                 "(one folder per class: root/<class>/<image>)")
    in_splits = df.groupby("class_name")["split"].unique()
    twice = [f"{c} ({' and '.join(s + '/' for s in sorted(v))})" for c, v in in_splits.items() if len(v) > 1]
    if twice:
        raise DatasetLayoutError(f"{root}: class(es) in more than one split folder: {_named(twice)}; train, val and "
                                 "test classes must be disjoint (the zero-shot protocol)")
    if not has_splits:
        split_of = dict(zip(classes, hash_split(classes, options.test_classes, options.val_classes,
                                                options.split_seed)))
        df["split"] = df["class_name"].map(split_of)
    elif "val" not in dirs:
        val = train_val_slice(sorted(df.loc[df["split"] == "train", "class_name"].unique()), options.val_classes,
                              options.split_seed)
        df.loc[df["class_name"].isin(val), "split"] = "val"
    df["label"] = df["class_name"].map({c: i for i, c in enumerate(classes)})
    out = finish(df, dataset)
    out.attrs["skipped"] = dict(sorted(skipped.items()))
    return out


def list_images(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Every image under ``root`` (any depth; hidden files and non-images skipped and counted in
    ``attrs["skipped"]``), sorted by path: ``path`` (relative to ``root``) and ``label`` — the folder it lies in,
    relative to ``root`` (None for images directly in ``root``). For embedding and searching a folder of images
    that need not be a training catalogue (``deepmetric embed`` / ``search``)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder")
    skipped: Counter = Counter()
    rows: list[tuple[str, str | None]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        sub, images = _entries(folder, skipped)
        rel = folder.relative_to(root).as_posix()
        rows += [(name if folder == root else f"{rel}/{name}", None if folder == root else rel) for name in images]
        stack.extend(folder / d for d in reversed(sub))
    if not rows:
        raise DatasetLayoutError(f"{root}: no image files (image files are {', '.join(sorted(IMAGE_SUFFIXES))})")
    out = pd.DataFrame(rows, columns=["path", "label"]).sort_values("path", kind="stable").reset_index(drop=True)
    out.attrs["skipped"] = dict(sorted(skipped.items()))
    return out
