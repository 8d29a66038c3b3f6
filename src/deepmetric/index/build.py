"""Build, (de)serialise, tune and measure a faiss index over L2-normalised embeddings (inner product)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class IndexBuildError(ValueError):
    """The factory string, its parameters or the gallery do not make a usable index."""


def _faiss():
    import faiss

    return faiss


def build_index(
    embeddings: np.ndarray,
    factory: str,
    search_params: Mapping[str, int] | None = None,
    ef_construction: int | None = None,
    seed: int = 0,
    train_size: int | None = None,
    polysemous_training: bool | None = None,
):
    """``faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)``, trained when needed (IVF, PQ) on the gallery
    or, with ``train_size``, on that many of its rows evenly spaced, then every embedding added in order (faiss id
    = row number). ``polysemous_training`` switches faiss' polysemous codes of an IVF-PQ on or off (faiss: on)."""
    faiss = _faiss()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise IndexBuildError(f"need a non-empty [N, dim] gallery, got shape {x.shape}")
    n, d = x.shape
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise IndexBuildError(f"faiss cannot build index.factory {factory!r} for dimension {d}: {_first_line(e)}") from None
    if ef_construction is not None:
        hnsw = _find_hnsw(index)
        if hnsw is None:
            raise IndexBuildError(f"index.ef_construction is set but {factory!r} is not an HNSW index")
        hnsw.hnsw.efConstruction = int(ef_construction)
    if not index.is_trained:
        needed = _training_points_needed(index)
        if n < needed:
            raise IndexBuildError(
                f"index.factory {factory!r} needs at least {needed} gallery vectors to train, the gallery has {n}; "
                "use fewer IVF lists / PQ bits, or Flat / HNSW"
            )
        _seed_clustering(index, seed)
        if polysemous_training is not None and _ivf(index) is not None:
            inner = faiss.downcast_index(_ivf(index))
            if hasattr(inner, "do_polysemous_training"):
                inner.do_polysemous_training = bool(polysemous_training)
        xt = x
        if train_size and max(train_size, needed) < n:
            xt = x[np.linspace(0, n - 1, max(train_size, needed)).astype(np.int64)]
        try:
            index.train(xt)
        except RuntimeError as e:
            raise IndexBuildError(f"training {factory!r} on {n} gallery vectors failed: {_first_line(e)}") from None
    index.add(x)
    apply_search_params(index, search_params or {})
    return index


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if "Error" in line or "error" in line or "failed" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(e).__name__


def _find_hnsw(index):
    faiss = _faiss()
    for cast in (faiss.downcast_index,):
        idx = cast(index)
        if isinstance(idx, faiss.IndexHNSW):
            return idx
        if isinstance(idx, faiss.IndexPreTransform):
            inner = faiss.downcast_index(idx.index)
            if isinstance(inner, faiss.IndexHNSW):
                return inner
    return None


def _ivf(index):
    faiss = _faiss()
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def _training_points_needed(index) -> int:
    """Lower bound on training vectors: k-means needs at least one point per centroid (IVF lists, PQ codes)."""
    faiss = _faiss()
    need = 1
    ivf = _ivf(index)
    if ivf is not None:
        need = max(need, int(ivf.nlist))
        inner = faiss.downcast_index(ivf)
        pq = getattr(inner, "pq", None)
        if pq is not None:
            need = max(need, 1 << int(pq.nbits))
    else:
        inner = faiss.downcast_index(index)
        pq = getattr(inner, "pq", None)
        if pq is not None:
            need = max(need, 1 << int(pq.nbits))
    return need


def _seed_clustering(index, seed: int) -> None:
    ivf = _ivf(index)
    if ivf is not None:
        ivf.cp.seed = int(seed)


def apply_search_params(index, params: Mapping[str, int]) -> None:
    """Set search-time parameters (``efSearch``, ``nprobe``) by name, refusing ones the index lacks."""
    faiss = _faiss()
    space = faiss.ParameterSpace()
    for name, value in params.items():
        if name == "efSearch" and _find_hnsw(index) is None:
            raise IndexBuildError(f"index.search.efSearch is set but the index is not HNSW ({type(faiss.downcast_index(index)).__name__})")
        if name == "nprobe" and _ivf(index) is None:
            raise IndexBuildError(f"index.search.nprobe is set but the index is not IVF ({type(faiss.downcast_index(index)).__name__})")
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as e:
            raise IndexBuildError(f"cannot set search parameter {name}={value}: {_first_line(e)}") from None


def make_reconstructible(index) -> None:
    """Let ``reconstruct`` / ``reconstruct_n`` read the vectors of an IVF index (builds its direct map); a no-op
    for indexes that can already give them back."""
    ivf = _ivf(index)
    if ivf is not None:
        ivf.make_direct_map()


def serialize_index(index) -> bytes:
    return _faiss().serialize_index(index).tobytes()


def deserialize_index(data: bytes):
    faiss = _faiss()
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8).copy())
    except RuntimeError as e:
        raise IndexBuildError(f"not a readable faiss index: {_first_line(e)}") from None


def read_index_file(path: str, mmap: bool = True):
    """The faiss index in file ``path``; with ``mmap``, its vectors, codes, graph and inverted lists mapped from
    the file (``faiss.IO_FLAG_MMAP_IFC``: Flat, HNSW, IVF-Flat/SQ/PQ in faiss 1.15), not copied into memory, so
    the page cache holds them once for every process serving the same file. A mapped index is read-only: adding
    to it (or to a clone of it) aborts the process, so a gallery update reads with ``mmap=False``."""
    faiss = _faiss()
    try:
        if mmap:
            try:
                return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
            except RuntimeError:
                pass  # a type faiss cannot map: read it whole
        return faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexBuildError(f"not a readable faiss index: {_first_line(e)}") from None


def _percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(seconds) * 1000.0
    return {"p50_ms": round(float(np.percentile(arr, 50)), 4), "p99_ms": round(float(np.percentile(arr, 99)), 4)}


def _latency(index, queries: np.ndarray, k: int, n_single: int) -> dict[str, Any]:
    single = []
    for i in range(min(n_single, len(queries))):
        q = queries[i : i + 1]
        t0 = time.perf_counter()
        index.search(q, k)
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    index.search(queries, k)
    batch_s = time.perf_counter() - t0
    return {
        "k": int(k),
        "single_query": {"queries": len(single), **_percentiles_ms(single)},
        "batch": {
            "queries": int(len(queries)),
            "total_ms": round(batch_s * 1000.0, 3),
            "ms_per_query": round(batch_s * 1000.0 / max(len(queries), 1), 5),
            "queries_per_s": round(len(queries) / batch_s, 1) if batch_s > 0 else None,
        },
    }


def _label_recall_at_1(neigh: np.ndarray, query_ids: np.ndarray, labels: np.ndarray) -> float:
    """Recall@1 by class: the nearest gallery item other than the query itself has the query's label."""
    hits = []
    for row, qid in zip(neigh, query_ids):
        cand = row[(row >= 0) & (row != qid)]
        hits.append(bool(len(cand)) and labels[cand[0]] == labels[qid])
    return float(np.mean(hits)) if hits else float("nan")


def evaluate_index(
    index,
    gallery: np.ndarray,
    query_ids: np.ndarray,
    labels: np.ndarray,
    ks: Sequence[int],
    latency_queries: int,
) -> dict[str, Any]:
    """Recall@k of ``index`` against exact inner-product search (fraction of the exact top-k it returns),
    class Recall@1 of both, and query latency of both. Queries are gallery rows ``query_ids``."""
    faiss = _faiss()
    x = np.ascontiguousarray(gallery, dtype=np.float32)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    queries = x[query_ids]
    kmax = min(max(ks), len(x))
    _, exact_nn = exact.search(queries, kmax + 1)
    _, ann_nn = index.search(queries, kmax + 1)
    recall = {}
    for k in ks:
        kk = min(k, len(x))
        inter = [len(set(e[:kk]) & set(a[:kk]) - {-1}) / kk for e, a in zip(exact_nn, ann_nn)]
        recall[f"recall@{k}_vs_exact"] = round(float(np.mean(inter)), 6)
    return {
        "queries": int(len(query_ids)),
        **recall,
        "class_recall@1": {
            "index": round(_label_recall_at_1(ann_nn, query_ids, labels), 6),
            "exact": round(_label_recall_at_1(exact_nn, query_ids, labels), 6),
        },
        "latency": {
            "index": _latency(index, queries, kmax, latency_queries),
            "exact": _latency(exact, queries, kmax, latency_queries),
        },
    }
