"""Columns computed for the checks great-expectations has no expectation for; GX then sets a plain expectation on
each (between 1 and 1, to be null, …), so its report and data docs show the failing rows.

Each column is added only when its inputs exist (a manifest missing a column fails the schema check, not a crash
here).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepmetric.data.contract import BBOX_COLUMNS
from deepmetric.data.images import ImageLimits
from deepmetric.validation.files import check_files
from deepmetric.validation.params import ValidateParams

__all__ = ["computed_columns"]


def _other_classes(df: pd.DataFrame) -> pd.Series:
    """For each row, the other classes of its split holding the same bytes ("name (label)", joined), None when
    none: the same image under two classes is a labelling error. (Across splits the leakage check reports it.)"""
    out = pd.Series(None, index=df.index, dtype=object)
    classes = df.groupby(["split", "sha256"], dropna=False)["label"].transform("nunique")
    dup = df[classes.to_numpy() > 1]
    if dup.empty:
        return out
    name = dup["class_name"].astype(str) if "class_name" in dup else dup["label"].astype(str)
    dup = dup.assign(_who=name + " (" + dup["label"].astype(str) + ")")
    for _, group in dup.groupby(["split", "sha256"], dropna=False):
        who = dict(zip(group["label"], group["_who"]))
        for i, label in zip(group.index, group["label"]):
            out[i] = ", ".join(sorted(w for lab, w in who.items() if lab != label))
    return out


def _box_errors(df: pd.DataFrame) -> pd.Series:
    """For each row with a bounding box, why the box is not inside its image (None: it is, or no box)."""
    box = df[list(BBOX_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    n_set = np.isfinite(box).sum(axis=1)
    w = pd.to_numeric(df["width"], errors="coerce").to_numpy(dtype=np.float64) if "width" in df else None
    h = pd.to_numeric(df["height"], errors="coerce").to_numpy(dtype=np.float64) if "height" in df else None
    out: list[str | None] = []
    for i, (x1, y1, x2, y2) in enumerate(box):
        if n_set[i] == 0:
            out.append(None)
        elif n_set[i] < 4:
            out.append(f"partial box {[None if np.isnan(v) else v for v in (x1, y1, x2, y2)]}: all of x_1, y_1, x_2, "
                       "y_2 or none")
        elif x2 <= x1 or y2 <= y1:
            out.append(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) has x_2 <= x_1 or y_2 <= y_1")
        elif min(x1, y1) < 0 or (w is not None and x2 > w[i]) or (h is not None and y2 > h[i]):
            size = f"{w[i]:g}x{h[i]:g}" if w is not None and h is not None else "the"
            out.append(f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) outside the {size} image")
        else:
            out.append(None)
    return pd.Series(out, index=df.index, dtype=object)


def computed_columns(df: pd.DataFrame, root: str | None, params: ValidateParams, limits: ImageLimits,
                     progress: bool | None) -> pd.DataFrame:
    """``df`` plus the computed columns (see the module docstring and docs/datasets.md's check table)."""
    cols = set(df.columns)
    out = df.copy()
    if {"split", "label"} <= cols:
        out["class_images_in_split"] = out.groupby(["split", "label"], dropna=False)["label"].transform("size")
        out["label_split_count"] = out.groupby("label", dropna=False)["split"].transform("nunique")
    if {"label", "class_name"} <= cols:
        out["label_name_count"] = out.groupby("label", dropna=False)["class_name"].transform("nunique")
    if {"sha256", "split"} <= cols:
        out["sha256_split_count"] = out.groupby("sha256", dropna=False)["split"].transform("nunique")
    if {"sha256", "split", "label"} <= cols:
        out["sha256_other_classes"] = _other_classes(out)
    if {"sha256", "label"} <= cols:
        out["sha256_in_class_count"] = out.groupby(["label", "sha256"], dropna=False)["label"].transform("size")
    if "label" in cols:
        out["class_size"] = out.groupby("label", dropna=False)["label"].transform("size")
        out["class_first_row"] = (~out["label"].duplicated()).astype("int64")
    if {"split", "role", "label"} <= cols and out["role"].eq("query").any():
        test = out[out["split"] == "test"]
        gallery = test[test["role"].isin(["gallery", "both"])].groupby("label").size()
        queries = (out["split"] == "test") & (out["role"] == "query")
        out["query_gallery_images"] = np.where(queries, out["label"].map(gallery).fillna(0), np.nan)
    if set(BBOX_COLUMNS) <= cols:
        out["bbox_error"] = _box_errors(out)
    if params.check_files and root is not None and "path" in cols:
        files = check_files(out, root, params, limits, progress)
        out["file_error"] = files["file_error"]
        out["file_format"] = files["file_format"]
        if "sha256" in cols:
            out["file_sha256"] = files["file_sha256"]
    return out
