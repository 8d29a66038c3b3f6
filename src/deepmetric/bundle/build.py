"""Build a bundle from the pipeline's artefacts (the `bundle` stage): :func:`build_bundle`.

Before anything is packaged, the artefacts must belong together — the model's output dimension is the index's, the
ids are the index rows, the index was embedded by this model, the index report describes this index and these ids,
the metrics are this model's — and the model must pass the ``bundle.require`` gate. The files and their manifest
are laid out by the one writer (:mod:`deepmetric.bundle.writer`); the catalog's dataset writes the folder.
"""

from __future__ import annotations

import io
import json
import math
import platform
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.bundle.config import BundleParams
from deepmetric.bundle.format import (
    FORMAT,
    ID_COLUMNS,
    IDS_FILE,
    INDEX_FILE,
    MODEL_FILE,
    THRESHOLDS_FILE,
    BundleError,
    sha256,
    short,
)
from deepmetric.bundle.thresholds import parse_thresholds, thresholds_bytes
from deepmetric.bundle.thumbnails import build_thumbnail_shards
from deepmetric.data.contract import boxes_of
from deepmetric.data.images import ImageLimits
from deepmetric.bundle.writer import bundle_files, seal
from deepmetric.runtime import source_timestamp

__all__ = ["build_bundle"]


def _versions(torch_version: str | None) -> dict[str, str]:
    import faiss
    import onnx
    import onnxruntime

    import deepmetric

    return {
        "deepmetric": deepmetric.__version__,
        "torch (export)": torch_version or "unknown",
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "faiss": faiss.__version__,
        "python": platform.python_version(),
    }


def _accepted(metrics: Mapping[str, Any] | None, params: BundleParams) -> dict[str, float]:
    metrics = dict(metrics or {})
    numeric = {k: float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    missing = sorted(set(params.require) - set(numeric))
    if missing:
        raise BundleError("metrics.json", f"bundle.require names {missing}, which metrics.json lacks "
                          f"(it has {sorted(numeric)})")
    failed = [f"{k} = {numeric[k]:.4f} < {v}" for k, v in params.require.items() if numeric[k] < v]
    if failed:
        raise BundleError("metrics.json", "model not accepted: " + "; ".join(failed) + " (bundle.require)")
    if params.accepted_on is None:
        return numeric
    absent = sorted(set(params.accepted_on) - set(numeric))
    if absent:
        raise BundleError("metrics.json", f"bundle.accepted_on names {absent}, which metrics.json lacks")
    return {k: numeric[k] for k in params.accepted_on}


def _lineage(onnx_sha: str, index_sha: str, ids: pd.DataFrame, weights: str | None,
             report: Mapping[str, Any], metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Check that the index was built by this model, the report describes this index and these ids, and the
    metrics are this model's; return the manifest's ``lineage``. Each mismatch names the stale file and the
    stage to rerun (``dvc repro`` reruns them all)."""
    from deepmetric.index.gallery import ids_digest

    built_by = report.get("model_sha256")
    if not built_by:
        raise BundleError("index.json", "does not say which model embedded the gallery (a report from before "
                          "lineage was recorded): rerun the index stage")
    if built_by != onnx_sha:
        raise BundleError(INDEX_FILE, f"the gallery was embedded by model {short(built_by)}, but the packaged "
                          f"model.onnx is {short(onnx_sha)}: the index is stale, rerun the index stage "
                          "(`dvc repro` reruns every stale stage)")
    if report.get("index_sha256") != index_sha:
        raise BundleError("index.json", f"describes index {short(report.get('index_sha256'))}, not the packaged "
                          f"index.faiss {short(index_sha)}: rerun the index stage")
    if report.get("ids_sha256") != ids_digest(ids):
        raise BundleError(IDS_FILE, "does not match the id table the index stage wrote with this index: rerun "
                          "the index stage")
    if not weights:
        raise BundleError(MODEL_FILE, "carries no weights fingerprint (ONNX metadata deepmetric.weights_sha256): "
                          "re-export it with the export stage")
    evaluated = (metrics or {}).get("model_weights_sha256")
    if not evaluated:
        raise BundleError("metrics.json", "does not say which model it evaluated (model_weights_sha256): rerun "
                          "the evaluate stage")
    if evaluated != weights:
        raise BundleError("metrics.json", f"are the metrics of weights {short(evaluated)}, but model.onnx was "
                          f"exported from weights {short(weights)}: rerun the evaluate stage so that accepted_on "
                          "describes the packaged model")
    return {
        "model_sha256": onnx_sha,
        "weights_sha256": weights,
        "index_model_sha256": built_by,
        "index_sha256": index_sha,
        "metrics_weights_sha256": evaluated,
        "data_version": report.get("data_version"),
        "gallery_version": 0,
    }


def build_bundle(
    onnx_bytes: bytes,
    index_bytes: bytes,
    ids: pd.DataFrame,
    metrics: Mapping[str, Any] | None,
    params: BundleParams,
    *,
    index_report: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    created: str | None = None,
    image_root: str | None = None,
    limits: ImageLimits = ImageLimits(),
    thresholds: Mapping[str, Any] | None = None,
) -> dict[str, bytes]:
    """``{relpath: bytes}`` for the `deploy_bundle` FileTreeDataset, checked as `load_bundle` will check it.
    ``thresholds``: the evaluate stage's thresholds.json (None: the bundle has none and serves without ``match``),
    checked and copied in.
    ``image_root``: the dataset folder the ids' paths are relative to (for the thumbnails), read under
    ``limits`` (the data parameters' limits, as every other stage). ``created``: default the source date
    (:func:`deepmetric.runtime.source_date`), so the same inputs give the same bundle, byte for byte."""
    from deepmetric.index.build import deserialize_index
    from deepmetric.index.embedder import OnnxEmbedder

    missing_cols = [c for c in ID_COLUMNS if c not in ids.columns]
    if missing_cols:
        raise BundleError(IDS_FILE, f"id table lacks columns {missing_cols}")
    boxes = boxes_of(ids)  # the index stage's boxes of boxed gallery images: the thumbnails are cut to them
    ids = ids[list(ID_COLUMNS)].reset_index(drop=True)
    if not np.array_equal(ids["id"].to_numpy(), np.arange(len(ids))):
        raise BundleError(IDS_FILE, "ids must be 0..N-1 in order (the faiss row numbers)")
    embedder = OnnxEmbedder(onnx_bytes)
    index = deserialize_index(index_bytes)
    if embedder.dim != index.d:
        raise BundleError(MODEL_FILE, f"model output dimension {embedder.dim} != index dimension {index.d}")
    if index.ntotal != len(ids):
        raise BundleError(IDS_FILE, f"{len(ids)} ids for {index.ntotal} index vectors")
    report = dict(index_report or {})
    lineage = _lineage(sha256(onnx_bytes), sha256(index_bytes), ids, embedder.weights_sha256, report, metrics)
    buf = io.BytesIO()
    ids.to_parquet(buf, index=False)
    accepted = _accepted(metrics, params)  # the gate first: no thumbnail work for a model that will not ship
    files = {MODEL_FILE: onnx_bytes, INDEX_FILE: index_bytes, IDS_FILE: buf.getvalue()}
    if thresholds is not None:
        parse_thresholds(thresholds)  # a bad file is refused here, naming it, not when the bundle is served
        files[THRESHOLDS_FILE] = thresholds_bytes(thresholds)
    thumbs = _thumbnails(ids, image_root, params, limits, boxes)
    if thumbs is not None:
        files.update(thumbs[1])
    meta = embedder.session.get_modelmeta().custom_metadata_map
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "created": created or source_timestamp(),  # from the inputs, not the clock: a rebuild is the same bundle
        "release": params.release,
        "model_version": sha256(onnx_bytes)[:12],
        "index_version": sha256(index_bytes)[:12],
        "input": embedder.input_meta,
        "embedding_dim": int(embedder.dim),
        "metric": "inner_product",
        "normalized": True,
        "index_factory": report.get("factory", "unknown"),
        "search_params": report.get("search_params", {}),
        "gallery_size": int(index.ntotal),
        "method": embedder.method,
        # family, name and the sha256 of the weights file training started from (ONNX metadata, export stage)
        "backbone": json.loads(meta["deepmetric.backbone"]) if meta.get("deepmetric.backbone") else None,
        "model_precision": meta.get("deepmetric.precision", "fp32"),
        "model_quantization": meta.get("deepmetric.quantization"),
        "dataset": dataset,
        "accepted_on": accepted,
        "index_report": {k: report[k] for k in report if k.startswith("recall@")},
        "versions": _versions(meta.get("deepmetric.torch")),
        "thumbnails": thumbs[0] if thumbs is not None else None,
        "thresholds": {"file": THRESHOLDS_FILE} if thresholds is not None else None,
        "lineage": lineage,
    }
    return bundle_files(seal(manifest, files), files)


def _thumbnails(ids: pd.DataFrame, image_root: str | None, params: BundleParams, limits: ImageLimits,
                boxes: list | None = None) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """(manifest entry, shard files) of the gallery thumbnails, or None when `bundle.thumbnails.enabled` is false."""
    t = params.thumbnails
    if not t.enabled:
        return None
    if image_root is None:
        raise BundleError("thumbnails", "bundle.thumbnails.enabled is true but no dataset root was given to read "
                          "the gallery images from (set bundle.thumbnails.enabled: false to build without)")
    from deepmetric.data.images import ImageDecodeError

    try:
        shards = build_thumbnail_shards(list(ids["path"].astype(str)), image_root, size=t.size, fmt=t.format,
                                        quality=t.quality, shard_items=t.shard_items, limits=limits, boxes=boxes)
    except (ImageDecodeError, OSError, ValueError) as e:
        raise BundleError("thumbnails", f"cannot make a gallery thumbnail: {e} (the dataset under {image_root} must "
                          "be the one the index was built from; or set bundle.thumbnails.enabled: false)") from None
    info = {"format": t.format, "size": t.size, "quality": t.quality, "shard_items": t.shard_items,
            "count": len(ids), "files": list(shards), "bytes": sum(len(v) for v in shards.values())}
    return info, shards
