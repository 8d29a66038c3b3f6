"""Pure metric functions. Definitions follow the DML literature:

- Recall@K ("hit@K"): 1 if any of the K nearest neighbours has the query's class, averaged over queries.
- MAP@R (Musgrave et al., "A Metric Learning Reality Check"): for a query with R relevant gallery items,
  (1/R) Σ_{i≤R} P(i)·rel(i) over its top-R neighbours — divided by R, not by the number of hits.
- R-precision: the fraction of the top-R neighbours that are relevant.
- NMI: faiss k-means (k = number of classes, fixed seed) vs labels, scikit-learn's
  `normalized_mutual_info_score` with ``average_method="arithmetic"``.

`evaluate_embeddings` reads them off one `rank_gallery` pass (blocks; no N×N matrix, no [N, max K] list): Recall@K
from the rank of each query's nearest correct item, MAP@R and R-precision from its top-R list, per query, then
averaged. `per_query_metrics` keeps the per-query values (the failure report groups them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepmetric.evaluation.knn import GalleryRanking, rank_gallery


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    hits = neighbour_labels == query_labels[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def recall_from_first_hit(first_hit: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K from the 0-based rank of each query's nearest correct item (-1: none in the gallery)."""
    first_hit = np.asarray(first_hit)
    found = first_hit >= 0
    return {k: float((found & (first_hit < k)).mean()) for k in ks}


def ap_at_r(hits: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per-query AP@R from the relevance of its ranked neighbours (at least max(r) columns); nan where R = 0."""
    r = np.asarray(r)
    width = int(r.max(initial=0))
    if hits.shape[1] < width:
        raise ValueError(f"MAP@R needs {width} neighbours per query, got {hits.shape[1]}")
    rel = hits[:, :width] & (np.arange(width)[None, :] < r[:, None])
    precision = np.cumsum(rel, axis=1) / np.arange(1, width + 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(r > 0, (precision * rel).sum(axis=1) / r, np.nan)


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> float:
    """``neighbour_labels`` must hold at least max(r) columns. Queries with R = 0 are skipped."""
    r = np.asarray(r)
    valid = r > 0
    if not valid.any():
        return float("nan")
    return float(ap_at_r(neighbour_labels[valid] == query_labels[valid][:, None], r[valid]).mean())


def per_query_metrics(ranking: GalleryRanking) -> dict[str, np.ndarray]:
    """``map@r`` (AP@R; nan where R = 0), ``r_precision`` (nan where R = 0), ``recall@1`` (0/1) per query."""
    r = ranking.relevant
    width = int(r.max(initial=0))
    rel = ranking.hits[:, :width] & (np.arange(width)[None, :] < r[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        r_precision = np.where(r > 0, rel.sum(axis=1) / r, np.nan)
    return {"map@r": ap_at_r(ranking.hits, r), "r_precision": r_precision,
            "recall@1": (ranking.first_hit == 0).astype(np.float64)}


def nmi(embeddings: np.ndarray, labels: np.ndarray, seed: int = 0, niter: int = 20) -> float:
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n_clusters = len(np.unique(labels))
    if n_clusters < 2 or n_clusters > len(x):
        return float("nan")
    km = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    _, assign = km.index.search(x, 1)
    return float(normalized_mutual_info_score(labels, assign[:, 0], average_method="arithmetic"))


def evaluate_embeddings(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi_seed: int = 0,
    with_nmi: bool = True,
    chunk: int = 4096,
) -> dict[str, float]:
    """All metrics with flat keys (``recall@1``, ``map@r``, ``r_precision``, ``nmi``).

    Without a gallery: leave-one-out over the query set (the query itself masked). With one (In-Shop):
    queries searched against the gallery only; NMI then clusters query+gallery together. Ks beyond the gallery
    are left out. ``chunk``: rows per block of the ranking (memory ~ ``chunk``² × 4 bytes).
    """
    return rank_and_evaluate(query, query_labels, gallery, gallery_labels, ks, nmi_seed, with_nmi, chunk)[0]


def rank_and_evaluate(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi_seed: int = 0,
    with_nmi: bool = True,
    chunk: int = 4096,
    width: int | None = None,
) -> tuple[dict[str, float], GalleryRanking]:
    """`evaluate_embeddings` and the ranking it read them from (each query's top max(``width``, R), at most the
    gallery), for the failure report without ranking twice."""
    query_labels = np.asarray(query_labels)
    same = gallery is None
    g, gl = (query, query_labels) if same else (gallery, np.asarray(gallery_labels))
    available = len(g) - (1 if same else 0)
    ranking = rank_gallery(query, query_labels, None if same else g, None if same else gl,
                           width=None if width is None else min(width, available), chunk=chunk)
    out = evaluate_ranking(ranking, [k for k in ks if k <= available])
    if with_nmi:
        emb = query if same else np.concatenate([query, g])
        lab = query_labels if same else np.concatenate([query_labels, gl])
        out["nmi"] = nmi(emb, lab, seed=nmi_seed)
    return out, ranking


def evaluate_ranking(ranking: GalleryRanking, ks: Sequence[int]) -> dict[str, float]:
    """``recall@K`` for each K, ``map@r`` and ``r_precision`` (means over the queries with R > 0) of a ranking."""
    out = {f"recall@{k}": v for k, v in recall_from_first_hit(ranking.first_hit, ks).items()}
    per_query = per_query_metrics(ranking)
    valid = ranking.relevant > 0
    for key in ("map@r", "r_precision"):
        out[key] = float(per_query[key][valid].mean()) if valid.any() else float("nan")
    return out
