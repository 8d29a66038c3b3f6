"""Re-ranking a retrieval: α-query expansion, database-side augmentation, k-reciprocal re-ranking.

- **α-QE** (Radenović et al., "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2018): the query
  is replaced by ``normalise(q + Σ_{i≤n} max(s_i, 0)^α · g_i)`` over its ``n`` nearest gallery vectors ``g_i``
  (similarities ``s_i``) and searched again: one more search per query.
- **DBA** (Gordo et al., "End-to-end learning of deep visual representations for image retrieval", IJCV 2017,
  with Radenović's α weights): every gallery vector is replaced the same way by its ``n`` nearest *other*
  gallery vectors — a gallery-side transform done once (one kNN pass over the gallery), nothing per query.
- **k-reciprocal** (Zhong et al., "Re-ranking person re-identification with k-reciprocal encoding", CVPR 2017):
  each query's top-``k`` list is re-ordered by ``(1-λ)·Jaccard + λ·d`` where the Jaccard distance compares the
  k-reciprocal neighbourhoods (``k1``, expanded with ``k1/2``-reciprocal sets, local expansion over ``k2``) and
  ``d = (1 - s) / 2`` (= ‖a-b‖²/4 on unit vectors; the paper divides squared distances by each column's maximum,
  which needs the N×N matrix, for unit vectors 4 at most). Bounded memory: it works on the top-``k1`` lists of
  the pool (queries and gallery, as in the paper) and on sparse neighbourhood vectors, never on an N×N matrix;
  it re-orders the top-``k`` shortlist rather than the whole gallery, so ``k`` must cover the neighbourhood
  (``k >= k1``). An evaluation tool: it reads the other queries.

Every function returns ``(scores, ids)`` ``[n_queries, k]``, best first, higher score = better (the inner product
for QE/DBA, ``1 - d*`` for k-reciprocal). ``exclude_self`` is the leave-one-out protocol (queries are the
gallery, row i = row i). QE and DBA need only numpy and faiss (a server imports them); k-reciprocal needs scipy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deepmetric.evaluation.knn import knn

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
_PAIRS = 16384


def _check_neighbourhood(k: int, n: int, what: str, name: str) -> None:
    if n < 1:
        raise ValueError(f"{name}={n} must be at least 1")
    if k < n:
        raise ValueError(f"k={k} is smaller than the {what}'s neighbourhood {name}={n}: ask for at least {n} "
                         f"neighbours or lower {name}")


def _check_alpha(alpha: float) -> None:
    if not alpha >= 0:
        raise ValueError(f"alpha={alpha} must be >= 0 (weights are similarity**alpha)")


def expand(vectors: np.ndarray, neighbours: np.ndarray, neighbour_sims: np.ndarray, alpha: float) -> np.ndarray:
    """``normalise(x + Σ_i max(s_i, 0)^α · n_i)`` per row: ``vectors`` [b, d], ``neighbours`` [b, n, d],
    ``neighbour_sims`` [b, n] (padding rows of a short list: similarity -inf, weight 0). float32."""
    _check_alpha(alpha)
    s = np.asarray(neighbour_sims, dtype=np.float32)
    finite = np.isfinite(s)
    w = np.where(finite, np.power(np.maximum(np.where(finite, s, 0), 0), np.float32(alpha)), 0).astype(np.float32)
    out = vectors.astype(np.float32) + np.einsum("bn,bnd->bd", w, neighbours.astype(np.float32))
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norm, np.finfo(np.float32).tiny)).astype(np.float32)


def expanded_queries(queries: np.ndarray, gallery: np.ndarray, search: Search, n: int, alpha: float,
                     exclude_self: bool = False, chunk: int = 4096) -> np.ndarray:
    """α-QE's new queries, from one ``search(x, k) -> (sims, ids)`` of the gallery (a faiss index's ``search``;
    ids index ``gallery``'s rows). With ``exclude_self``, query i's own gallery row i is skipped."""
    out = np.empty((len(queries), gallery.shape[1]), dtype=np.float32)
    extra = 1 if exclude_self else 0
    for a in range(0, len(queries), chunk):
        b = min(a + chunk, len(queries))
        sims, ids = search(np.ascontiguousarray(queries[a:b], dtype=np.float32), n + extra)
        if exclude_self:
            sims, ids = _drop_own(sims, ids, np.arange(a, b), n)
        sims = np.where(ids >= 0, sims, -np.inf)
        out[a:b] = expand(queries[a:b], gallery[np.maximum(ids, 0)], sims, alpha)
    return out


def _drop_own(sims: np.ndarray, ids: np.ndarray, own: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` entries of each row other than its own id."""
    keep = ids != own[:, None]
    rank = np.cumsum(keep, axis=1) - 1
    keep &= rank < n
    out_s = np.full((len(ids), n), -np.inf, dtype=np.float32)
    out_i = np.full((len(ids), n), -1, dtype=np.int64)
    rows, cols = np.nonzero(keep)
    out_s[rows, rank[rows, cols]], out_i[rows, rank[rows, cols]] = sims[rows, cols], ids[rows, cols]
    return out_s, out_i


def _flat_search(gallery: np.ndarray) -> Search:
    import faiss

    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    return index.search


def query_expansion(query: np.ndarray, gallery: np.ndarray, k: int, n: int = 2, alpha: float = 3.0,
                    exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """α-QE: expand each query over its ``n`` nearest gallery vectors, search again for the top ``k``."""
    _check_neighbourhood(k, n, "query expansion", "n")
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    q2 = expanded_queries(query, g, _flat_search(g), n, alpha, exclude_self)
    return knn(q2, g, k, exclude_self=exclude_self)


def database_augmentation(gallery: np.ndarray, n: int = 2, alpha: float = 3.0, chunk: int = 4096) -> np.ndarray:
    """DBA: every gallery vector expanded over its ``n`` nearest other gallery vectors (one kNN pass). The result
    replaces the gallery (in the index); queries are searched against it unchanged."""
    if n < 1:
        raise ValueError(f"n={n} must be at least 1")
    g = np.ascontiguousarray(gallery, dtype=np.float32)
    if n > len(g) - 1:
        raise ValueError(f"n={n} needs a gallery of more than {n} vectors, got {len(g)}")
    return expanded_queries(g, g, _flat_search(g), n, alpha, exclude_self=True, chunk=chunk)


def dba_search(query: np.ndarray, gallery: np.ndarray, k: int, n: int = 2, alpha: float = 3.0,
               exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Search ``query`` against the DBA-augmented ``gallery`` (what a server with a DBA'd index returns)."""
    return knn(query, database_augmentation(gallery, n, alpha), k, exclude_self=exclude_self)


# --- k-reciprocal ---------------------------------------------------------------------------------------------
def k_reciprocal(query: np.ndarray, gallery: np.ndarray | None, k: int, k1: int = 20, k2: int = 6,
                 lambda_value: float = 0.3, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """k-reciprocal re-ranking of each query's top-``k`` (leave-one-out over ``query`` when ``gallery`` is None).

    Returns ``(1 - d*, ids)`` with ``d* = (1-λ)·Jaccard + λ·(1-s)/2``; see the module docstring."""
    if not 1 <= k2 <= k1 + 1:
        raise ValueError(f"k2={k2} must be in [1, k1 + 1 = {k1 + 1}]")
    if not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value={lambda_value} must be in [0, 1]")
    _check_neighbourhood(k, k1, "k-reciprocal re-ranking", "k1")
    same = gallery is None
    q = np.ascontiguousarray(query, dtype=np.float32)
    pool = q if same else np.concatenate([q, np.ascontiguousarray(gallery, dtype=np.float32)])
    if len(pool) - 1 < k1:
        raise ValueError(f"k1={k1} needs more than {k1} vectors in the queries and gallery, got {len(pool)}")
    sims, ids = knn(q, q if same else pool[len(q):], k, exclude_self=same)
    v = _neighbourhood_vectors(pool, k1, k2, chunk)
    g_pool = ids if same else ids + len(q)
    score = np.empty_like(sims)
    step = max(1, _PAIRS // k)  # queries per chunk: about _PAIRS (query, candidate) rows of V at a time
    for a in range(0, len(q), step):
        b = min(a + step, len(q))
        rows = np.repeat(np.arange(a, b), k)
        overlap = np.asarray(v[rows].minimum(v[g_pool[a:b].ravel()]).sum(axis=1)).reshape(b - a, k)
        jaccard = 1 - overlap / (2 - overlap)  # Σ max = Σ a + Σ b - Σ min, each vector summing to 1
        score[a:b] = 1 - ((1 - lambda_value) * jaccard + lambda_value * (1 - sims[a:b]) / 2)
    order = np.argsort(-score, axis=1, kind="stable")  # equal scores keep the first search's order
    return np.take_along_axis(score, order, axis=1).astype(np.float32), np.take_along_axis(ids, order, axis=1)


def _reciprocal(lists: np.ndarray) -> np.ndarray:
    """``lists[i]`` with every j whose own list does not hold i replaced by -1."""
    p, width = lists.shape
    rows = np.repeat(np.arange(p, dtype=np.int64), width)
    forward = np.sort(rows * p + lists.ravel())
    backward = lists.ravel() * p + rows
    pos = np.minimum(np.searchsorted(forward, backward), len(forward) - 1)
    return np.where((forward[pos] == backward).reshape(p, width), lists, -1)


def _neighbourhood_vectors(pool: np.ndarray, k1: int, k2: int, chunk: int):
    """The paper's V after local query expansion: a CSR matrix [P, P], each row summing to 1."""
    from scipy import sparse

    p = len(pool)
    _, near = knn(pool, pool, k1, exclude_self=True)
    forward = np.concatenate([np.arange(p)[:, None], near], axis=1)  # itself first, as in the paper
    recip = _reciprocal(forward)
    half = _reciprocal(forward[:, :int(np.around(k1 / 2)) + 1])
    rows_all, cols_all, vals_all = [], [], []
    for a in range(0, p, chunk):
        b = min(a + chunk, p)
        r = recip[a:b]  # [c, k1+1]
        cand = half[np.maximum(r, 0)]  # [c, k1+1, h]: each reciprocal neighbour's half-size reciprocal set
        cand = np.where((r >= 0)[..., None], cand, -1)
        size = (cand >= 0).sum(axis=2)
        shared = ((cand[..., None] == r[:, None, None, :]) & (cand >= 0)[..., None]).any(axis=3).sum(axis=2)
        cand = np.where((shared > 2 / 3 * size)[..., None], cand, -1)
        members = np.sort(np.concatenate([r, cand.reshape(b - a, -1)], axis=1), axis=1)
        first = np.ones_like(members, dtype=bool)
        first[:, 1:] = members[:, 1:] != members[:, :-1]
        rr, cc = np.nonzero(first & (members >= 0))
        cols = members[rr, cc]
        rows = rr + a
        dist = (1 - np.einsum("ij,ij->i", pool[rows], pool[cols])) / 2
        rows_all.append(rows)
        cols_all.append(cols)
        vals_all.append(np.exp(-dist))
    rows, cols, vals = (np.concatenate(x) for x in (rows_all, cols_all, vals_all))
    v = sparse.csr_matrix((vals, (rows, cols)), shape=(p, p), dtype=np.float64)
    v = sparse.diags(1 / np.asarray(v.sum(axis=1)).ravel()) @ v
    if k2 > 1:
        local = sparse.csr_matrix((np.full(p * k2, 1 / k2), (np.repeat(np.arange(p), k2), forward[:, :k2].ravel())),
                                  shape=(p, p))
        v = local @ v
    return v.tocsr()


# --- one entry point, for the evaluate stage's `evaluate.rerank` ------------------------------------------------
RERANKINGS = ("none", "qe", "dba", "kreciprocal")
"""The re-rankings `evaluate.rerank` names, at the settings `benchmarks/evaluation` measured: α-QE and DBA with
n = 2, α = 3; k-reciprocal with k1 = 20, k2 = 6, λ = 0.3."""


def rerank_search(query: np.ndarray, gallery: np.ndarray | None, k: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the top ``k`` after ``method`` (one of `RERANKINGS`; leave-one-out over ``query``
    when ``gallery`` is None; DBA then augments the queries as the gallery they are)."""
    if method not in RERANKINGS:
        raise ValueError(f"rerank={method!r}: one of {', '.join(RERANKINGS)}")
    same = gallery is None
    g = query if same else gallery
    if method == "kreciprocal":
        return k_reciprocal(query, gallery, k, k1=20, k2=6, lambda_value=0.3)
    if method == "qe":
        return query_expansion(query, g, k, n=2, alpha=3.0, exclude_self=same)
    if method == "dba":
        return knn(query, database_augmentation(g, n=2, alpha=3.0), k, exclude_self=same)
    return knn(query, g, k, exclude_self=same)
