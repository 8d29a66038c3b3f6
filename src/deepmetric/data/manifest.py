"""Ingest: the reader's rows + what decoding every file tells (``width``, ``height`` after EXIF, ``sha256``).
The reader's optional columns (``category``, the box ``x_1 … y_2``) are kept after the contract's.

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
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from deepmetric.data.contract import BBOX_COLUMNS, MANIFEST_COLUMNS, OPTIONAL_COLUMNS
from deepmetric.data.images import ImageDecodeError, ImageLimits, PathEscapeError, check_header, image_size, safe_join
from deepmetric.runtime import resolve_processes

__all__ = ["BadFilesError", "Probe", "build_manifest", "probe_files"]

log = logging.getLogger(__name__)

_CHUNK = 256
_MAX_LISTED = 50


class BadFilesError(ValueError):
    """Files that cannot be used; ``bad`` is a list of ``(path, reason)``."""

    def __init__(self, bad: list[tuple[str, str]], root: str | os.PathLike[str], hint: str = "",
                 table: str | None = None, rows: dict[str, int] | None = None) -> None:
        self.bad = bad
        listed = "\n".join(f"  {_where(p, rows)}: {r}" for p, r in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        source = f" (listed by {table})" if table else ""
        super().__init__(f"{len(bad)} bad image file(s) under {root}{source}:\n{listed}{more}{hint}")


def _where(path: str, rows: dict[str, int] | None) -> str:
    """A bad file as a message names it: its path, after its table row when a table lists it."""
    return f"row {rows[path]}: {path}" if rows and path in rows else path


def _table_rows(table: str | None, root: str | os.PathLike[str], paths: list[str]) -> dict[str, int] | None:
    """The rows of ``paths`` in ``table``, the file a table layout listed the records from (None without one, or
    when the table cannot be read again)."""
    if not table or not paths:
        return None
    from deepmetric.data.readers.table import TableError, table_rows

    try:
        return table_rows(table, root, paths)
    except (OSError, TableError):
        return None


class Probe(NamedTuple):
    """What reading one listed file told: its size after EXIF orientation, the sha256 of its bytes, why it is
    not usable (None: it is) and its format as Pillow names it (``JPEG``, ``PNG``, …; "" when unreadable)."""

    width: int
    height: int
    sha256: str
    error: str | None
    format: str = ""


def _probe_one(root: str, rel: str, limits: ImageLimits) -> Probe:
    try:
        path = safe_join(root, rel)
    except PathEscapeError as e:
        return Probe(0, 0, "", f"ESCAPE:{e}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Probe(0, 0, "", "file not found")
    except IsADirectoryError:
        return Probe(0, 0, "", "is a directory, not an image file")
    except OSError as e:
        return Probe(0, 0, "", f"cannot read file ({e.strerror or e})")
    digest = hashlib.sha256(data).hexdigest()
    try:
        w, h = image_size(data, name=rel, limits=limits)
    except ImageDecodeError as e:
        return Probe(0, 0, digest, e.reason)
    return Probe(w, h, digest, None, check_header(data, rel, limits).format or "")


def _probe_chunk(root: str, rels: Sequence[str], limits: ImageLimits) -> list[Probe]:
    return [_probe_one(root, rel, limits) for rel in rels]


def probe_files(
    root: str | os.PathLike[str],
    paths: Sequence[str],
    limits: ImageLimits = ImageLimits(),
    workers: int = 0,
    desc: str = "decoding images",
    progress: bool | None = None,
) -> list[Probe]:
    """Decode and hash every path (relative to ``root``) under ``limits``; returns a :class:`Probe` per path in
    input order. Parallel over ``workers`` processes (0: one per core this process may run on, as every
    ``processes`` parameter: `deepmetric.runtime.resolve_processes`; 1: in this process), in chunks of 256 files."""
    from tqdm.auto import tqdm

    root = str(root)
    paths = list(paths)
    workers = resolve_processes(workers)
    if progress is None:
        progress = not os.environ.get("DEEPMETRIC_NO_PROGRESS")
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, file=sys.stderr,
               mininterval=0.5, smoothing=0.1)
    out: list[Probe] = []
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

    ``records``: ``path, label, class_name, split, role, dataset`` (paths relative to ``root``), plus any of
    ``category``, ``x_1 … y_2``; ``limits``: the per-image bounds of the decode (an image beyond them is a bad
    file). The report counts what the reader skipped (``records.attrs["skipped"]``), the image formats and sizes,
    and the rows with a box or a category.
    """
    if bad_files not in ("fail", "drop"):
        raise ValueError(f"bad_files must be 'fail' or 'drop', got {bad_files!r}")
    missing = [c for c in ("path", "label", "class_name", "split", "role", "dataset") if c not in records]
    if missing:
        raise ValueError(f"reader output lacks column(s) {', '.join(missing)}")
    t0 = time.perf_counter()
    paths = records["path"].astype(str).tolist()
    results = probe_files(root, paths, limits, workers=workers, progress=progress)
    escapes = [(p, r.error[len("ESCAPE:"):]) for p, r in zip(paths, results)
               if r.error and r.error.startswith("ESCAPE:")]
    table = records.attrs.get("table")
    if escapes:
        raise BadFilesError(escapes, root, "\nrefusing to read outside the dataset root (data.root)", table,
                            _table_rows(table, root, [p for p, _ in escapes[:_MAX_LISTED]]))
    bad = [(p, r.error) for p, r in zip(paths, results) if r.error]
    rows = _table_rows(table, root, [p for p, _ in bad])
    if bad and bad_files == "fail":
        raise BadFilesError(
            bad, root, "\nfix or remove these files, or set data.bad_files: drop to leave them out with a warning",
            table, rows)
    df = records.copy().reset_index(drop=True)
    df["width"] = pd.array([r.width for r in results], dtype="int64")
    df["height"] = pd.array([r.height for r in results], dtype="int64")
    df["sha256"] = [r.sha256 for r in results]
    keep = [r.error is None for r in results]
    if bad:
        preview = "; ".join(f"{_where(p, rows)}: {r}" for p, r in bad[:5])
        msg = (f"dropping {len(bad)} bad image file(s) under {root} (data.bad_files: drop): {preview}"
               + (" ..." if len(bad) > 5 else ""))
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
        df = df[keep].reset_index(drop=True)
    df = df.loc[:, list(MANIFEST_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in df]]
    df["label"] = df["label"].astype("int64")
    seconds = time.perf_counter() - t0
    formats = Counter(r.format for r in results if r.error is None)
    report = {
        "dataset": str(records["dataset"].iloc[0]) if len(records) else None,
        "root": str(Path(root)),
        "listed_images": len(records),
        "images": len(df),
        "classes": int(df["label"].nunique()),
        "bad_files_policy": bad_files,
        "dropped": len(bad),
        "dropped_files": [{"path": p, "reason": r, **({"row": rows[p]} if rows and p in rows else {})}
                          for p, r in bad],
        "per_split": {
            s: {"images": int((df["split"] == s).sum()), "classes": int(df.loc[df["split"] == s, "label"].nunique())}
            for s in ("train", "val", "test")
        },
        "per_role": {r: int(n) for r, n in df["role"].value_counts().sort_index().items()},
        "skipped": dict(records.attrs.get("skipped") or {}),
        "formats": dict(sorted(formats.items())),
        "with_bbox": int(df[list(BBOX_COLUMNS)].notna().all(axis=1).sum()) if set(BBOX_COLUMNS) <= set(df) else 0,
        "categories": int(df["category"].nunique()) if "category" in df else 0,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(records) / seconds, 1) if seconds > 0 else None,
    }
    return df, report
