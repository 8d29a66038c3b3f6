"""What a catalogue looks like, for the data docs and ``validation.json``: images per class, image sizes, formats.

Shown in GX's data docs as the notes of ``info`` expectations (they never fail a run) and written as
``report["profile"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CLASS_SIZE_BINS", "class_size_note", "format_note", "image_size_note", "profile"]

#: Bins of the images-per-class histogram: (low, high) inclusive, high None = no bound.
CLASS_SIZE_BINS: tuple[tuple[int, int | None], ...] = ((1, 1), (2, 2), (3, 5), (6, 10), (11, 100), (101, None))


def _stats(values: pd.Series) -> dict[str, float]:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=np.float64)
    if not len(v):
        return {}
    q = np.percentile(v, [0, 5, 50, 95, 100])
    return {"min": float(q[0]), "p5": float(q[1]), "median": float(q[2]), "p95": float(q[3]), "max": float(q[4])}


def profile(df: pd.DataFrame) -> dict[str, Any]:
    """Images per class (statistics and histogram), width and height statistics, and counts of the image formats
    (of the files decoded by the file check)."""
    out: dict[str, Any] = {}
    if "label" in df:
        sizes = df.groupby("label").size()
        hist = {}
        for lo, hi in CLASS_SIZE_BINS:
            n = int(((sizes >= lo) & (sizes <= (hi if hi is not None else np.inf))).sum())
            hist[f"{lo}" if lo == hi else (f"{lo}-{hi}" if hi is not None else f">{lo - 1}")] = n
        out["images_per_class"] = {**_stats(sizes), "histogram": hist}
    for c in ("width", "height"):
        if c in df:
            out[c] = _stats(df[c])
    if "file_format" in df:
        fmt = df["file_format"].dropna()
        out["formats"] = {str(k): int(v) for k, v in fmt.value_counts().sort_index().items()}
        out["formats_of"] = int(len(fmt))
    return out


def _line(stats: dict[str, float]) -> str:
    return " · ".join(f"{k} {v:,.0f}" for k, v in stats.items() if k != "histogram")


def class_size_note(p: dict[str, Any]) -> str:
    s = p.get("images_per_class") or {}
    bins = " | ".join(f"{k}: {v:,}" for k, v in (s.get("histogram") or {}).items())
    return f"Images per class: {_line(s)}.\n\nClasses by images: {bins}."


def image_size_note(p: dict[str, Any]) -> str:
    return " \n\n".join(f"{c.capitalize()} (pixels): {_line(p[c])}." for c in ("width", "height") if p.get(c))


def format_note(p: dict[str, Any]) -> str:
    counts = ", ".join(f"{k}: {v:,}" for k, v in (p.get("formats") or {}).items())
    return f"Formats of the {p.get('formats_of', 0):,} files decoded by the file check: {counts or 'none'}."
