"""Ingest: the reader's rows + what decoding every file tells (``width``, ``height`` after EXIF, ``sha256``).

Every file is read once, hashed and fully decoded (``deepmetric.data.images``), in parallel worker processes
with a tqdm progress bar. Bad files (missing, empty, truncated, not an image, decompression bomb) follow the
``bad_files`` policy: ``"fail"`` raises one :class:`BadFilesError` listing every bad path and its reason;
``"drop"`` warns, leaves them out and lists them in the report. A path that escapes the dataset root is
always an error (it is a broken or hostile listing, not a bad image).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from deepmetric.data.contract import MANIFEST_COLUMNS
from deepmetric.data.images import ImageDecodeError, ImageLimits, PathEscapeError, image_size, safe_join

__all__ = ["BadFilesError", "build_manifest", "probe_files"]

log = logging.getLogger(__name__)

_CHUNK = 256
_MAX_LISTED = 50


class BadFilesError(ValueError):
    """Files that cannot be used; ``bad`` is a list of ``(path, reason)``."""

    def __init__(self, bad: list[tuple[str, str]], root: str | os.PathLike[str], hint: str = "") -> None:
        self.bad = bad
        listed = "\n".join(f"  {p}: {r}" for p, r in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        super().__init__(f"{len(bad)} bad image file(s) under {root}:\n{listed}{more}{hint}")


def _probe_one(root: str, rel: str, limits: ImageLimits) -> tuple[int, int, str, str | None]:
    """``(width, height, sha256, error)`` for one listed file."""
    try:
        path = safe_join(root, rel)
    except PathEscapeError as e:
        return 0, 0, "", f"ESCAPE:{e}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, 0, "", "file not found"
    except IsADirectoryError:
        return 0, 0, "", "is a directory, not an image file"
    except OSError as e:
        return 0, 0, "", f"cannot read file ({e.strerror or e})"
    digest = hashlib.sha256(data).hexdigest()
    try:
        w, h = image_size(data, name=rel, limits=limits)
    except ImageDecodeError as e:
        return 0, 0, digest, e.reason
    return w, h, digest, None


def _probe_chunk(root: str, rels: Sequence[str],
                 limits: ImageLimits) -> list[tuple[int, int, str, str | None]]:
    return [_probe_one(root, rel, limits) for rel in rels]


def probe_files(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    limits: ImageLimits = ImageLimits(),
    workers: int = 0,
    desc: str = "decoding images",
    progress: bool | None = None,
) -> list[tuple[int, int, str, str | None]]:
    """Decode and hash every path (relative to ``root``) under ``limits``; returns ``(width, height, sha256,
    error)`` per path in input order (``error`` None for a good file). Parallel over ``workers`` processes
    (0: all cores)."""
    from tqdm.auto import tqdm

    root = str(root)
    paths = list(paths)
    workers = workers or os.cpu_count() or 1
    if progress is None:
        progress = not os.environ.get("DEEPMETRIC_NO_PROGRESS")
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5, smoothing=0.1)
    out: list[tuple[int, int, str, str | None]] = []
    try:
        if workers == 1 or len(paths) <= 4 * _CHUNK:
            for rel in paths:
                out.append(_probe_one(root, rel, limits))
                bar.update(1)
        else:
            chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(_probe_chunk, root, c, limits) for c in chunks]
                for fut, c in zip(futures, chunks):
                    out.extend(fut.result())
                    bar.update(len(c))
    finally:
        bar.close()
    return out


def build_manifest(
    records: pd.DataFrame,
    root: str | os.PathLike[str],
    bad_files: str = "fail",
    limits: ImageLimits = ImageLimits(),
    workers: int = 0,
    progress: bool | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Add ``width``, ``height``, ``sha256`` to a reader's rows; returns ``(manifest, report)``.

    ``records``: ``path, label, class_name, split, role, dataset`` (paths relative to ``root``);
    ``limits``: the per-image bounds of the decode (an image beyond them is a bad file).
    """
    if bad_files not in ("fail", "drop"):
        raise ValueError(f"bad_files must be 'fail' or 'drop', got {bad_files!r}")
    missing = [c for c in ("path", "label", "class_name", "split", "role", "dataset") if c not in records]
    if missing:
        raise ValueError(f"reader output lacks column(s) {', '.join(missing)}")
    t0 = time.perf_counter()
    paths = records["path"].astype(str).tolist()
    results = probe_files(root, paths, limits, workers=workers, progress=progress)
    escapes = [(p, err[len("ESCAPE:"):]) for p, (_, _, _, err) in zip(paths, results)
               if err and err.startswith("ESCAPE:")]
    if escapes:
        raise BadFilesError(escapes, root, "\nrefusing to read outside the dataset root (data.root)")
    bad = [(p, err) for p, (_, _, _, err) in zip(paths, results) if err]
    if bad and bad_files == "fail":
        raise BadFilesError(
            bad, root, "\nfix or remove these files, or set data.bad_files: drop to leave them out with a warning"
        )
    df = records.copy().reset_index(drop=True)
    df["width"] = pd.array([r[0] for r in results], dtype="int64")
    df["height"] = pd.array([r[1] for r in results], dtype="int64")
    df["sha256"] = [r[2] for r in results]
    keep = [r[3] is None for r in results]
    if bad:
        preview = "; ".join(f"{p}: {r}" for p, r in bad[:5])
        msg = (f"dropping {len(bad)} bad image file(s) under {root} (data.bad_files: drop): {preview}"
               + (" ..." if len(bad) > 5 else ""))
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        df = df[keep].reset_index(drop=True)
    df = df.loc[:, list(MANIFEST_COLUMNS)]
    df["label"] = df["label"].astype("int64")
    seconds = time.perf_counter() - t0
    report = {
        "dataset": str(records["dataset"].iloc[0]) if len(records) else None,
        "root": str(Path(root)),
        "listed_images": len(records),
        "images": len(df),
        "classes": int(df["label"].nunique()),
        "bad_files_policy": bad_files,
        "dropped": len(bad),
        "dropped_files": [{"path": p, "reason": r} for p, r in bad],
        "per_split": {
            s: {"images": int((df["split"] == s).sum()), "classes": int(df.loc[df["split"] == s, "label"].nunique())}
            for s in ("train", "val", "test")
        },
        "per_role": {r: int(n) for r, n in df["role"].value_counts().sort_index().items()},
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 1) if seconds > 0 else None,
    }
    return df, report
