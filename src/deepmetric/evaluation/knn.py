"""Exact k-nearest neighbours with faiss, streamed in query chunks so SOP-size sets fit in memory."""

from __future__ import annotations

import numpy as np


def knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclude_self: bool = False,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows by inner product (= cosine / Euclidean rank on L2-normalised vectors).

    With ``exclude_self`` (leave-one-out: queries *are* the gallery, row i = row i), each query's own row is
    masked out by its index — not by dropping the first column, which is wrong when duplicates tie with it.
    Returns (similarities, indices), both ``[n_queries, k]``.
    """
    import faiss

    q = np.ascontiguousarray(queries, dtype=np.float32)
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    if exclude_self and q.shape[0] != g.shape[0]:
        raise ValueError("exclude_self needs the queries to be the gallery")
    available = g.shape[0] - (1 if exclude_self else 0)
    if not 1 <= k <= available:
        raise ValueError(f"k={k} outside [1, {available}] (gallery of {g.shape[0]})")
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    extra = 1 if exclude_self else 0
    sims = np.empty((q.shape[0], k), dtype=np.float32)
    ids = np.empty((q.shape[0], k), dtype=np.int64)
    for start in range(0, q.shape[0], chunk):
        stop = min(start + chunk, q.shape[0])
        d, i = index.search(q[start:stop], k + extra)
        if exclude_self:
            own = np.arange(start, stop)[:, None]
            is_self = i == own
            # Drop the own index where found; otherwise drop the last column (self ranked beyond k+1).
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
            keep = np.ones_like(i, dtype=bool)
            keep[np.arange(stop - start), drop] = False
            d = d[keep].reshape(stop - start, k)
            i = i[keep].reshape(stop - start, k)
        sims[start:stop], ids[start:stop] = d, i
    return sims, ids
