"""Pure metric functions. Definitions follow the DML literature:

- Recall@K ("hit@K"): 1 if any of the K nearest neighbours has the query's class, averaged over queries.
- MAP@R (Musgrave et al., "A Metric Learning Reality Check"): for a query with R relevant gallery items,
  (1/R) Σ_{i≤R} P(i)·rel(i) over its top-R neighbours — divided by R, not by the number of hits.
- NMI: faiss k-means (k = number of classes, fixed seed) vs labels, scikit-learn's
  `normalized_mutual_info_score` with ``average_method="arithmetic"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepmetric.evaluation.knn import knn


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    hits = neighbour_labels == query_labels[:, None]
    return {k: float(hits[:, :k].any(axis=1).mean()) for k in ks}


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> float:
    """``neighbour_labels`` must hold at least max(r) columns. Queries with R = 0 are skipped."""
    r = np.asarray(r)
    valid = r > 0
    if not valid.any():
        return float("nan")
    nl, ql, r = neighbour_labels[valid], query_labels[valid], r[valid]
    width = int(r.max())
    if nl.shape[1] < width:
        raise ValueError(f"MAP@R needs {width} neighbours per query, got {nl.shape[1]}")
    rel = (nl[:, :width] == ql[:, None]) & (np.arange(width)[None, :] < r[:, None])
    precision = np.cumsum(rel, axis=1) / np.arange(1, width + 1)[None, :]
    return float(((precision * rel).sum(axis=1) / r).mean())


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
) -> dict[str, float]:
    """All metrics with flat keys (``recall@1``, ``map@r``, ``r_precision``, ``nmi``).

    Without a gallery: leave-one-out over the query set (the query itself masked). With one (In-Shop):
    queries searched against the gallery only; NMI then clusters query+gallery together.
    """
    query_labels = np.asarray(query_labels)
    same = gallery is None
    g, gl = (query, query_labels) if same else (gallery, np.asarray(gallery_labels))
    classes, counts = np.unique(gl, return_counts=True)
    count_of = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    r = np.array([count_of.get(c, 0) - (1 if same else 0) for c in query_labels.tolist()])
    available = len(g) - (1 if same else 0)
    ks = [k for k in ks if k <= available]
    width = int(min(available, max(max(ks, default=1), int(r.max(initial=0)))))
    _, idx = knn(query, g, width, exclude_self=same)
    nl = gl[idx]
    out = {f"recall@{k}": v for k, v in recall_at_k(nl, query_labels, ks).items()}
    out["map@r"] = map_at_r(nl, query_labels, np.minimum(r, width))
    rel = (nl == query_labels[:, None]) & (np.arange(width)[None, :] < r[:, None])
    valid = r > 0
    out["r_precision"] = float((rel.sum(axis=1)[valid] / r[valid]).mean()) if valid.any() else float("nan")
    if with_nmi:
        emb = query if same else np.concatenate([query, g])
        lab = query_labels if same else np.concatenate([query_labels, gl])
        out["nmi"] = nmi(emb, lab, seed=nmi_seed)
    return out
