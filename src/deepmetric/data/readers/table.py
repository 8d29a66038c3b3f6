"""The ``table`` layout: a team's own images listed in a CSV or Parquet file (``data.table``).

Columns (others are ignored; the column table is in docs/datasets.md):

- ``path`` (required): the image, relative to ``data.root`` (POSIX or Windows separators) or absolute under it.
- ``label`` (required): the class, an integer or any text (text labels are numbered in sorted order and name the
  class unless ``class_name`` is given).
- ``class_name``: the class's name (default: the label as written).
- ``split``: ``train``, ``val`` or ``test`` (open-metric-learning's ``validation`` is ``test``: its held-out
  classes). Without the column the classes are split by a hash of their name (``data.split``); with it and
  no ``val`` rows, ``data.val_classes`` of the training classes become ``val``.
- ``is_query`` and ``is_gallery`` (both or neither; booleans): the role of each test row (both true: a query
  searched against the other test images; query only / gallery only: a separate gallery). Or ``role``
  (``query``, ``gallery``, ``both``), as in deepmetric's own manifest. Train and val rows are always ``both``.
- ``category``: a super-class, carried into the manifest (per-category metrics).
- ``x_1, y_1, x_2, y_2`` (all four or none): a bounding box in pixels, right/bottom exclusive; empty in a row
  means the whole image. Read when ``data.bbox`` is ``crop`` or ``auto``.

A table written by open-metric-learning (``label, path, split, is_query, is_gallery[, category, x_1, x_2, y_1,
y_2]``) and a manifest written by deepmetric's ingest (``path, label, class_name, split, role, …``) load as they
are. Every refusal names the file, the row (1-based, as a spreadsheet shows it after the header) and the column.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from deepmetric.data.readers.base import LAYOUTS, ReadOptions
from deepmetric.data.readers.common import (
    BBOX_COLUMNS, DatasetLayoutError, finish, hash_split, train_val_slice,
)

REQUIRED = ("path", "label")
#: split values as written → the contract's split (OML's "validation" holds its held-out test classes)
SPLIT_VALUES = {"train": "train", "val": "val", "test": "test", "validation": "test"}
ROLE_VALUES = ("query", "gallery", "both")
_TRUE = {"true", "1", "yes", "y", "t", "1.0"}
_FALSE = {"false", "0", "no", "n", "f", "0.0"}
_MAX_NAMED = 5


class TableError(DatasetLayoutError):
    """A table the layout cannot read; the message names the file, the rows and the column."""


def _rows(index: Sequence[int]) -> str:
    shown = ", ".join(str(int(i) + 1) for i in list(index)[:_MAX_NAMED])
    more = f" and {len(index) - _MAX_NAMED} more" if len(index) > _MAX_NAMED else ""
    return f"row{'s' if len(index) > 1 else ''} {shown}{more}"


def table_path(root: str | os.PathLike[str], table: str | os.PathLike[str]) -> Path:
    """``data.table`` as a file: an absolute path as is, a relative one under ``root``."""
    p = Path(table)
    return p if p.is_absolute() else Path(root) / p


def load_table(path: Path) -> pd.DataFrame:
    """The raw table (CSV: every cell as text, empty cells missing; Parquet: its types)."""
    if not path.is_file():
        raise TableError(f"{path}: table not found (parameter data.table; a relative path is under data.root)")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False,
                               na_values=[""], skipinitialspace=True)
    except Exception as e:  # pandas/pyarrow raise many types for a malformed file
        raise TableError(f"{path}: cannot read the table ({type(e).__name__}: {e})") from None
    raise TableError(f"{path}: unknown table format {suffix!r}; use .csv, .tsv or .parquet")


def _cell(v: object) -> str | None:
    if v is None or (np.ndim(v) == 0 and pd.isna(v)):
        return None
    text = str(v).strip()
    return text or None


def _text(col: pd.Series) -> pd.Series:
    """Cells as stripped text (object dtype); missing and empty cells are None."""
    return pd.Series([_cell(v) for v in col], index=col.index, dtype=object)


def _missing(col: pd.Series) -> np.ndarray:
    return col.isna().to_numpy()


def _paths(df: pd.DataFrame, root: Path, where: str) -> list[str]:
    """Relative POSIX paths under ``root``; absolute ones are made relative; any path leaving the root is refused."""
    raw = _text(df["path"])
    if _missing(raw).any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(_missing(raw)))}: empty 'path'")
    real_root = os.path.realpath(root)
    out, escapes = [], []
    for i, p in enumerate(raw):
        posix = p.replace("\\", "/")
        windows_abs = PureWindowsPath(p).drive != ""
        if PurePosixPath(posix).is_absolute() or windows_abs:
            real = os.path.realpath(p)
            if real != real_root and real.startswith(real_root.rstrip(os.sep) + os.sep):
                out.append(Path(real).relative_to(real_root).as_posix())
                continue
            escapes.append((i, p))
            continue
        norm = posixpath.normpath(posix)
        if norm == ".." or norm.startswith("../"):
            escapes.append((i, p))
            continue
        out.append(norm)
    if escapes:
        shown = "; ".join(f"row {i + 1}: {p!r}" for i, p in escapes[:_MAX_NAMED])
        raise TableError(f"{where}: column 'path' leaves data.root ({root}) in {len(escapes)} row(s): {shown}; "
                         "paths are relative to data.root, or absolute paths inside it")
    return out


def _labels(df: pd.DataFrame, where: str) -> tuple[pd.Series, pd.Series]:
    """(integer labels, class names as written). Integer labels are kept; text labels are numbered in sorted
    order."""
    col = df["label"]
    text = _text(col)
    if _missing(text).any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(_missing(text)))}: empty 'label'")
    as_num = pd.to_numeric(text, errors="coerce")
    if as_num.notna().all() and (as_num == np.floor(as_num)).all():
        labels = as_num.astype("int64")
        return labels, labels.astype(str)
    names = sorted(text.unique())
    return text.map({n: i for i, n in enumerate(names)}).astype("int64"), text


def _splits(df: pd.DataFrame, where: str) -> pd.Series | None:
    if "split" not in df:
        return None
    text = _text(df["split"])
    if _missing(text).any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(_missing(text)))}: empty 'split' (give every row a split, "
                         "or drop the column to split by class)")
    bad = ~text.isin(list(SPLIT_VALUES))
    if bad.any():
        values = sorted(set(text[bad]))
        raise TableError(f"{where}: {_rows(np.flatnonzero(bad))}: unknown 'split' value(s) {values} "
                         f"(allowed: {', '.join(SPLIT_VALUES)})")
    return text.map(SPLIT_VALUES)


def _flags(col: pd.Series, name: str, where: str) -> pd.Series:
    """A boolean column (true/false, 1/0, yes/no); missing stays missing."""
    text = _text(col).map(lambda v: v if v is None else v.lower())
    bad = ~(text.isna() | text.isin(_TRUE | _FALSE))
    if bad.any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(bad))}: '{name}' is not a boolean "
                         f"({sorted(set(text[bad]))[:3]}; use true/false or 1/0)")
    return text.map(lambda v: None if v is None else v in _TRUE)


def _roles(df: pd.DataFrame, split: pd.Series, where: str) -> pd.Series:
    """The role of every row: from ``is_query``/``is_gallery`` or ``role``; train and val rows are ``both``."""
    has_q, has_g, has_role = "is_query" in df, "is_gallery" in df, "role" in df
    if has_q != has_g:
        given, lacking = ("is_query", "is_gallery") if has_q else ("is_gallery", "is_query")
        raise TableError(f"{where}: column '{given}' without '{lacking}'; give both (or neither: every test "
                         "image is then a query searched against the others)")
    if has_q and has_role:
        raise TableError(f"{where}: both 'role' and 'is_query'/'is_gallery' columns; keep one of them")
    test = (split == "test").to_numpy()
    role = pd.Series("both", index=df.index, dtype=object)
    if has_role:
        text = _text(df["role"])
        bad = test & ~text.isin(ROLE_VALUES).to_numpy()
        if bad.any():
            raise TableError(f"{where}: {_rows(np.flatnonzero(bad))}: 'role' must be one of {', '.join(ROLE_VALUES)} "
                             "for test rows")
        role[test] = text[test]
    elif has_q:
        q, g = _flags(df["is_query"], "is_query", where), _flags(df["is_gallery"], "is_gallery", where)
        unset = test & (q.isna() | g.isna()).to_numpy()
        if unset.any():
            raise TableError(f"{where}: {_rows(np.flatnonzero(unset))}: test rows need 'is_query' and 'is_gallery'")
        neither = test & ~(q.fillna(False) | g.fillna(False)).astype(bool).to_numpy()
        if neither.any():
            raise TableError(f"{where}: {_rows(np.flatnonzero(neither))}: 'is_query' and 'is_gallery' both false "
                             "(the image would take no part in evaluation)")
        qb, gb = q.fillna(False).astype(bool), g.fillna(False).astype(bool)
        role[test] = np.where(qb & gb, "both", np.where(qb, "query", "gallery"))[test]
    return role


def _boxes(df: pd.DataFrame, where: str) -> pd.DataFrame | None:
    present = [c for c in BBOX_COLUMNS if c in df]
    if not present:
        return None
    if len(present) != len(BBOX_COLUMNS):
        lacking = [c for c in BBOX_COLUMNS if c not in df]
        raise TableError(f"{where}: bounding-box column(s) {', '.join(present)} without {', '.join(lacking)}; "
                         f"give all of {', '.join(BBOX_COLUMNS)} or none")
    box = pd.DataFrame({c: pd.to_numeric(_text(df[c]), errors="coerce") for c in BBOX_COLUMNS})
    for c in BBOX_COLUMNS:
        bad = _text(df[c]).notna() & box[c].isna()
        if bad.any():
            raise TableError(f"{where}: {_rows(np.flatnonzero(bad))}: '{c}' is not a number")
    n_set = box.notna().sum(axis=1).to_numpy()
    partial = (n_set > 0) & (n_set < 4)
    if partial.any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(partial))}: a bounding box needs all of "
                         f"{', '.join(BBOX_COLUMNS)} (or none, for the whole image)")
    full = n_set == 4
    flipped = full & ((box["x_2"] <= box["x_1"]) | (box["y_2"] <= box["y_1"])).to_numpy()
    if flipped.any():
        i = int(np.flatnonzero(flipped)[0])
        raise TableError(f"{where}: {_rows(np.flatnonzero(flipped))}: bounding box with x_2 <= x_1 or y_2 <= y_1 "
                         f"(row {i + 1}: {box.iloc[i].tolist()}); x_1, y_1 is the top-left corner, x_2, y_2 the "
                         "bottom-right one")
    negative = full & (box.min(axis=1) < 0).to_numpy()
    if negative.any():
        raise TableError(f"{where}: {_rows(np.flatnonzero(negative))}: bounding box outside the image "
                         "(negative coordinate)")
    return box


@LAYOUTS.register("table", kind="generic", doc="docs/datasets.md")
def read(root: str | os.PathLike[str], options: ReadOptions = ReadOptions(), dataset: str = "catalogue") -> pd.DataFrame:
    root = Path(root)
    if not options.table:
        raise TableError("the table layout needs data.table (a CSV or Parquet file listing path, label, …)")
    path = table_path(root, options.table)
    raw = load_table(path).reset_index(drop=True)
    where = str(path)
    missing = [c for c in REQUIRED if c not in raw]
    if missing:
        raise TableError(f"{where}: missing column(s) {', '.join(repr(c) for c in missing)} (found: "
                         f"{', '.join(map(str, raw.columns)) or 'none'}); the table needs at least path, label")
    if raw.empty:
        raise TableError(f"{where}: the table lists no images")
    labels, written = _labels(raw, where)
    df = pd.DataFrame({"path": _paths(raw, root, where), "label": labels})
    df["class_name"] = _text(raw["class_name"]).fillna(written) if "class_name" in raw else written
    # a class's split is drawn from its label as written (stable when classes are added; text labels are
    # renumbered then)
    key = pd.Series(written.to_numpy(), index=df.index)
    split = _splits(raw, where)
    if split is None:
        keys = sorted(key.unique())
        df["split"] = key.map(dict(zip(keys, hash_split(keys, options.test_classes, options.val_classes,
                                                        options.split_seed))))
    else:
        df["split"] = split
        splits_of = df.groupby("label")["split"].unique()
        twice = splits_of[splits_of.map(len) > 1]
        if len(twice):
            lab = twice.index[0]
            rows = np.flatnonzero((df["label"] == lab).to_numpy())
            raise TableError(f"{where}: label(s) {[int(x) for x in twice.index[:_MAX_NAMED]]} appear in more than one "
                             f"split (label {lab}: {', '.join(sorted(twice.iloc[0]))}, {_rows(rows)}); train, val and "
                             "test classes must be disjoint (the zero-shot protocol)")
        if not (df["split"] == "val").any():
            train = (df["split"] == "train").to_numpy()
            val = train_val_slice(sorted(key[train].unique()), options.val_classes, options.split_seed)
            df.loc[train & key.isin(val).to_numpy(), "split"] = "val"
    df["role"] = _roles(raw, df["split"], where).to_numpy()
    if "category" in raw:
        df["category"] = _text(raw["category"]).to_numpy()
    box = _boxes(raw, where) if options.bbox else None
    if box is not None:
        df[list(BBOX_COLUMNS)] = box.to_numpy()
    out = finish(df, dataset)
    out.attrs["skipped"] = {}
    out.attrs["table"] = where
    return out


def table_rows(table: str | os.PathLike[str], root: str | os.PathLike[str], paths: Sequence[str]) -> dict[str, int]:
    """The 1-based row (as a spreadsheet shows it after the header) of each of ``paths`` in ``table``, as the layout
    reads them (relative to ``root``); the first row where a path is listed twice. For messages about files
    that rows list (a missing or unreadable image), found by reading the table again — only when there is one."""
    listed = list_table(table, root, bbox=False)["path"].tolist()
    want, rows = set(paths), {}
    for i, p in enumerate(listed):
        if p in want and p not in rows:
            rows[p] = i + 1
    return rows


def list_table(path: str | os.PathLike[str], root: str | os.PathLike[str], bbox: bool = True) -> pd.DataFrame:
    """The images a table lists, for embedding and searching them (``deepmetric embed`` / ``search``): ``path``
    (relative to ``root``), ``label`` (as written, text; None without the column), ``class_name`` when given, and
    the box ``x_1 … y_2`` when given and ``bbox``. Only ``path`` is required; the checks are the table layout's."""
    path, root = Path(path), Path(root)
    raw = load_table(path).reset_index(drop=True)
    where = str(path)
    if "path" not in raw:
        raise TableError(f"{where}: missing column 'path' (found: {', '.join(map(str, raw.columns)) or 'none'})")
    if raw.empty:
        raise TableError(f"{where}: the table lists no images")
    out = pd.DataFrame({"path": _paths(raw, root, where)})
    out["label"] = _text(raw["label"]).to_numpy() if "label" in raw else None
    if "class_name" in raw:
        out["class_name"] = _text(raw["class_name"]).to_numpy()
    box = _boxes(raw, where) if bbox else None
    if box is not None:
        out[list(BBOX_COLUMNS)] = box.to_numpy()
    return out
