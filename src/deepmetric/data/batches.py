"""Manifest images as ``uint8`` NHWC batches through the one evaluation transform (`open_image` + `eval_image`),
each cut to its bounding box first where the manifest gives one: what the export's parity check and int8
calibration, the index stage and `deepmetric embed` / `search` feed to a model. Imports neither torch nor onnx (an
inference host runs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.data.contract import Box, boxes_of
from deepmetric.data.images import ImageLimits, safe_join
from deepmetric.data.transforms import load_eval_image

__all__ = ["iter_batches", "load_batch", "row_batches"]


def load_batch(root: str | os.PathLike[str], paths: Sequence[str], spec: Any,
               limits: ImageLimits, boxes: Sequence[Box | None] | None = None) -> np.ndarray:
    """Manifest paths (relative to ``root``) → ``uint8 [N, crop, crop, 3]``, decoded under ``limits``, each cut to
    its box in ``boxes`` (None: whole images)."""
    crop = int(spec.crop)
    out = np.empty((len(paths), crop, crop, 3), dtype=np.uint8)
    for i, rel in enumerate(paths):
        out[i] = load_eval_image(safe_join(root, rel), spec, limits=limits, box=None if boxes is None else boxes[i])
    return out


def iter_batches(
    root: str | os.PathLike[str], paths: Sequence[str], spec: Any, limits: ImageLimits, batch_size: int,
    boxes: Sequence[Box | None] | None = None,
) -> Iterator[np.ndarray]:
    for start in range(0, len(paths), batch_size):
        yield load_batch(root, paths[start : start + batch_size], spec, limits,
                         None if boxes is None else boxes[start : start + batch_size])


def row_batches(root: str | os.PathLike[str], rows: pd.DataFrame, spec: Any, limits: ImageLimits,
                batch_size: int) -> Iterator[np.ndarray]:
    """:func:`iter_batches` over manifest rows: their paths, cut to their boxes where they have them."""
    return iter_batches(root, list(rows["path"]), spec, limits, batch_size, boxes_of(rows))
