"""The `index` stage: embed the gallery with the exported model, build the index, write ids + report."""

from __future__ import annotations

import hashlib
import os
import platform
import time
from typing import Any

import numpy as np
import pandas as pd

from deepmetric.data.batches import row_batches
from deepmetric.data.contract import BBOX_COLUMNS, boxes_of
from deepmetric.data.images import ImageLimits
from deepmetric.export.images import spaced_subset, test_rows
from deepmetric.index.auto import AUTO, choose_factory
from deepmetric.index.build import build_index, evaluate_index, serialize_index
from deepmetric.index.config import IndexParams
from deepmetric.index.embedder import OnnxEmbedder, embed_shard, init_shard_worker
from deepmetric.parallel import run_sharded
from deepmetric.runtime import resolve_processes, threads_per_worker

GALLERY_ROLES = ("gallery", "both")
QUERY_ROLES = ("query", "both")
ID_COLUMNS = ["id", "label", "class_name", "path"]


def embed_rows(embedder: OnnxEmbedder, rows: pd.DataFrame, root: str | os.PathLike[str], batch_size: int,
               limits: ImageLimits) -> np.ndarray:
    parts = [embedder.embed(b, batch_size) for b in row_batches(root, rows, embedder.spec, limits, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, embedder.dim), dtype=np.float32)


def embed_gallery(onnx_bytes: bytes, embedder: OnnxEmbedder, rows: pd.DataFrame, root: str | os.PathLike[str],
                  params: IndexParams, limits: ImageLimits) -> np.ndarray:
    """The rows' embeddings in row order (images decoded under ``limits``): serially, or with
    ``params.processes`` worker processes, each embedding contiguous batch-aligned shards (the same batches as
    the serial path), concatenated in order."""
    processes = resolve_processes(params.processes)
    if processes == 1 or len(rows) <= params.batch_size:
        return embed_rows(embedder, rows, root, params.batch_size, limits)
    threads = params.threads or threads_per_worker(processes)
    return run_sharded(embed_shard, len(rows), params.batch_size, processes, initializer=init_shard_worker,
                       initargs=(onnx_bytes, threads, str(root), [str(p) for p in rows["path"]], limits,
                                 params.batch_size, boxes_of(rows)))


def ids_digest(ids: pd.DataFrame) -> str:
    """sha256 of the id table's content (``id, label, class_name, path``, row by row)."""
    h = hashlib.sha256()
    for row in ids[ID_COLUMNS].itertuples(index=False):
        h.update(("\t".join(str(v) for v in row) + "\n").encode())
    return h.hexdigest()


def data_version(manifest: pd.DataFrame) -> str:
    """sha256 of the validated manifest's rows that matter to a gallery (path, file sha256, label, split, role),
    in a canonical order: the data version an index was built from."""
    cols = [c for c in ("path", "sha256", "label", "split", "role") if c in manifest.columns]
    rows = sorted("\t".join(str(v) for v in r) for r in manifest[cols].itertuples(index=False))
    return hashlib.sha256(("\n".join([",".join(cols), *rows])).encode()).hexdigest()


def resolve_index(params: IndexParams, n: int, dim: int) -> dict[str, Any]:
    """The index to build for ``n`` gallery vectors of dimension ``dim``: ``params.factory``, or with ``auto``
    the one :func:`deepmetric.index.auto.choose_factory` picks, with its tuned search parameter (a value set in
    ``index.search`` wins), its build settings (``index.ef_construction`` wins) and its training sample."""
    resolved: dict[str, Any] = {"factory": params.factory, "search_params": params.search.as_dict(),
                                "ef_construction": params.ef_construction, "auto": None}
    if params.factory != AUTO or n < 1 or dim < 1:  # an empty gallery: build_index says so
        return resolved
    choice = choose_factory(n, dim)
    return {
        "factory": choice.factory,
        "search_params": {**choice.search, **params.search.as_dict()},
        "ef_construction": params.ef_construction if params.ef_construction is not None
        else choice.build.get("ef_construction"),
        "auto": {"kind": choice.kind, "search_params": choice.search, "train_size": choice.train_size,
                 "polysemous_training": choice.build.get("polysemous_training"), "why": choice.why},
    }


def build_gallery_index(
    onnx_bytes: bytes, manifest: pd.DataFrame, root: str | os.PathLike[str], params: IndexParams,
    limits: ImageLimits = ImageLimits(),
) -> tuple[bytes, pd.DataFrame, dict[str, Any]]:
    """→ (faiss index bytes, ids table [id, label, class_name, path] (+ the box ``x_1 … y_2`` of boxed gallery
    images), report); the gallery images are decoded under ``limits`` (the data parameters' per-image bounds)."""
    import faiss

    embedder = OnnxEmbedder(onnx_bytes, threads=params.threads)
    gallery_rows = test_rows(manifest, GALLERY_ROLES)
    t0 = time.perf_counter()
    x = embed_gallery(onnx_bytes, embedder, gallery_rows, root, params, limits)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chosen = resolve_index(params, len(x), x.shape[1] if x.ndim == 2 else 0)
    auto = chosen["auto"] or {}
    poly = auto.get("polysemous_training")
    index = build_index(x, chosen["factory"], chosen["search_params"], chosen["ef_construction"], params.seed,
                        train_size=auto.get("train_size"), polysemous_training=None if poly is None else bool(poly))
    build_s = time.perf_counter() - t0

    ids = pd.DataFrame({
        "id": np.arange(len(gallery_rows), dtype=np.int64),
        "label": gallery_rows["label"].astype(np.int64).to_numpy(),
        "class_name": gallery_rows["class_name"].astype(str).to_numpy() if "class_name" in gallery_rows
        else gallery_rows["label"].astype(str).to_numpy(),
        "path": gallery_rows["path"].astype(str).to_numpy(),
    })[ID_COLUMNS]
    if boxes_of(gallery_rows) is not None:  # the bundle stage cuts the gallery thumbnails to them
        ids[list(BBOX_COLUMNS)] = gallery_rows[list(BBOX_COLUMNS)].to_numpy(dtype=np.float64)

    # Queries for the report: gallery rows that are also queries (role both), or else any gallery rows.
    qmask = gallery_rows["role"].isin(QUERY_ROLES).to_numpy() if "role" in gallery_rows else np.ones(len(x), bool)
    query_ids = np.flatnonzero(qmask) if qmask.any() else np.arange(len(x))
    if len(query_ids) > params.eval_queries:
        query_ids = query_ids[np.unique(np.linspace(0, len(query_ids) - 1, params.eval_queries).round().astype(int))]
    evaluation = evaluate_index(index, x, query_ids, ids["label"].to_numpy(), params.recall_ks,
                                params.latency_queries)
    data = serialize_index(index)
    report = {
        "factory": chosen["factory"],  # with `index.factory: auto`, the one chosen (`auto` says why)
        "factory_requested": params.factory,
        "auto": chosen["auto"],
        "metric": "inner_product",
        "search_params": chosen["search_params"],
        "ef_construction": chosen["ef_construction"],
        "index_type": type(faiss.downcast_index(index)).__name__,
        "gallery_size": int(index.ntotal),
        "embedding_dim": int(index.d),
        "index_bytes": len(data),
        "embed_seconds": round(embed_s, 3),
        "build_seconds": round(build_s, 3),
        "embedded_with": "onnxruntime CPUExecutionProvider",
        "embed_processes": resolve_processes(params.processes),
        "faiss": faiss.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": faiss.omp_get_max_threads(),
        # Lineage, checked by the bundle stage: the model that embedded this gallery, this index, its ids.
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "weights_sha256": embedder.weights_sha256,
        "index_sha256": hashlib.sha256(data).hexdigest(),
        "ids_sha256": ids_digest(ids),
        "data_version": data_version(manifest),
        **evaluation,
    }
    return data, ids, report


__all__ = ["GALLERY_ROLES", "ID_COLUMNS", "build_gallery_index", "data_version", "embed_gallery", "embed_rows",
           "ids_digest", "resolve_index", "spaced_subset"]
