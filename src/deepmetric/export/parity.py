"""ONNX Runtime vs PyTorch on real images: max abs difference of the embeddings and Recall@1 of both."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from deepmetric.data.images import ImageLimits
from deepmetric.export.images import row_batches, spaced_subset, test_rows
from deepmetric.export.onnx_export import ExportModule


class ParityError(RuntimeError):
    """The exported model does not reproduce PyTorch within the tolerance."""


def ort_session(onnx_bytes: bytes, threads: int = 0):
    """An onnxruntime CPU session (explicit provider: the wheel also lists an Azure one)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])


def recall_at_1(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out Recall@1 (inner product; the query itself is masked, not dropped by position)."""
    import faiss

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    k = min(2, len(x))
    _, nn_idx = index.search(x, k)
    own = np.arange(len(x))[:, None]
    nn_idx = np.where(nn_idx == own, -1, nn_idx)
    first = np.array([row[row >= 0][0] if (row >= 0).any() else -1 for row in nn_idx])
    hits = (first >= 0) & (labels[np.maximum(first, 0)] == labels)
    return float(hits.mean())


def check_parity(
    method: torch.nn.Module,
    input_cfg: Any,
    onnx_bytes: bytes,
    manifest: pd.DataFrame,
    root: str | os.PathLike[str],
    *,
    tolerance: float,
    recall_tolerance: float,
    max_images: int,
    batch_size: int,
    limits: ImageLimits,
) -> dict[str, Any]:
    """Embed the same test images (through `eval_image`, decoded under ``limits``) with PyTorch and
    onnxruntime; raise `ParityError` when the max abs difference exceeds ``tolerance`` or Recall@1 drops by
    more than ``recall_tolerance``."""
    rows = spaced_subset(test_rows(manifest), max_images)
    module = ExportModule(method.export_module(), input_cfg).eval()
    session = ort_session(onnx_bytes)
    in_name = session.get_inputs()[0].name
    torch_out, ort_out = [], []
    t_torch = t_ort = 0.0
    for batch in row_batches(root, rows, input_cfg, limits, batch_size):
        t0 = time.perf_counter()
        with torch.no_grad():
            torch_out.append(module(torch.from_numpy(batch)).numpy())
        t1 = time.perf_counter()
        ort_out.append(session.run(None, {in_name: batch})[0])
        t2 = time.perf_counter()
        t_torch += t1 - t0
        t_ort += t2 - t1
    a = np.concatenate(torch_out).astype(np.float32)
    b = np.concatenate(ort_out).astype(np.float32)
    if a.shape != b.shape:
        raise ParityError(f"onnx output shape {b.shape} differs from pytorch {a.shape}")
    labels = rows["label"].to_numpy()
    diff = np.abs(a - b)
    r1_torch, r1_onnx = recall_at_1(a, labels), recall_at_1(b, labels)
    top1_same = _top1_agreement(a, b)
    report = {
        "images": int(len(rows)),
        "embedding_dim": int(a.shape[1]),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "tolerance": float(tolerance),
        "recall@1_pytorch": r1_torch,
        "recall@1_onnx": r1_onnx,
        "recall_tolerance": float(recall_tolerance),
        "top1_neighbour_agreement": top1_same,
        "output_norm_max_dev": float(np.abs(np.linalg.norm(b, axis=1) - 1.0).max()),
        "seconds_pytorch": round(t_torch, 3),
        "seconds_onnxruntime": round(t_ort, 3),
    }
    problems = []
    if report["max_abs_diff"] > tolerance:
        problems.append(f"max |onnx - pytorch| = {report['max_abs_diff']:.3g} exceeds export.tolerance = {tolerance:g}")
    if r1_torch - r1_onnx > recall_tolerance:
        problems.append(
            f"Recall@1 dropped from {r1_torch:.4f} (pytorch) to {r1_onnx:.4f} (onnx), more than "
            f"export.recall_tolerance = {recall_tolerance:g}"
        )
    report["passed"] = not problems
    if problems:
        raise ParityError("ONNX parity check failed on %d test images: %s" % (len(rows), "; ".join(problems)))
    return report


def _top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -np.inf)
    np.fill_diagonal(sb, -np.inf)
    return float((sa.argmax(1) == sb.argmax(1)).mean())
