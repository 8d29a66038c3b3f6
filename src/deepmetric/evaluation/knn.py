"""Exact nearest neighbours by inner product (= cosine / Euclidean rank on L2-normalised vectors), in bounded memory.

Two entry points:

- `knn` — the top-``k`` gallery rows of each query (faiss, streamed in query chunks). Label-free: the retrieval
  grid, re-ranking and any caller that wants neighbour lists.
- `rank_gallery` — what the evaluation needs from a labelled split, without an N×N matrix or an [N, K] list for
  the largest K: each query's top-``width`` neighbours (``width`` ≥ its number of relevant items R, which MAP@R
  reads) and the exact rank of its nearest *correct* gallery item over the whole gallery (Recall@K for every K,
  however large). It runs in square blocks of ``chunk`` rows; in leave-one-out (no separate gallery) the
  similarity matrix is symmetric and each off-diagonal block serves its rows and its columns, so half the
  products are computed. Memory: the block (``chunk``² float32) plus ``width`` neighbours per query.

Ranking convention of `rank_gallery` (stated because metrics depend on it when similarities tie exactly):
gallery items are ordered by similarity, highest first; among exactly equal similarities a wrong item comes
before a correct one (the pessimistic order: a tie never flatters the model), then by gallery row. The order does
not depend on how the rows are arranged in the split. faiss (`knn`) orders exact ties arbitrarily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SAMPLE = 1024  # gallery rows whose similarities seed each query's admission bound (see _seed_bounds)
_DENSE = 32  # a block with more than 1/_DENSE of its entries to read out counts over the block instead


def knn(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    exclude_self: bool = False,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows by inner product.

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


@dataclass(frozen=True)
class GalleryRanking:
    """Per query (rows in the caller's order; gallery indices in the caller's gallery order):

    - ``ids``, ``sims``: the top-``width`` neighbours, best first (``width`` = columns; -1 / -inf pad a query
      whose gallery has fewer than ``width`` items, never the case with `rank_gallery`'s width check);
    - ``hits``: ``ids`` carry the query's label;
    - ``relevant``: R, the number of gallery items with the query's label (itself excluded in leave-one-out);
    - ``first_hit``: 0-based rank of the nearest correct item in the whole gallery (-1 when R = 0): it is a hit
      at K exactly when ``0 <= first_hit < K``;
    - ``nearest_correct``, ``nearest_correct_sim``: that item's gallery index and similarity (-1 / nan).
    """

    ids: np.ndarray
    sims: np.ndarray
    hits: np.ndarray
    relevant: np.ndarray
    first_hit: np.ndarray
    nearest_correct: np.ndarray
    nearest_correct_sim: np.ndarray

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])


def relevant_counts(query_labels: np.ndarray, gallery_labels: np.ndarray, leave_one_out: bool) -> np.ndarray:
    """R per query: gallery items with its label, minus itself in leave-one-out."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.searchsorted(classes, query_labels)
    pos_clipped = np.minimum(pos, len(classes) - 1)
    found = (pos < len(classes)) & (classes[pos_clipped] == query_labels)
    return np.where(found, counts[pos_clipped], 0).astype(np.int64) - (1 if leave_one_out else 0)


def rank_gallery(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray | None = None,
    gallery_labels: np.ndarray | None = None,
    width: int | None = None,
    chunk: int = 4096,
) -> GalleryRanking:
    """Rank the gallery for every query (leave-one-out over the queries when ``gallery`` is None).

    Each query keeps its top max(``width``, largest R) neighbours (the top R make MAP@R exact; ``width`` asks
    for more, e.g. to show them), at most the gallery size (minus one in leave-one-out). See the module docstring
    for the block scheme and the order of exact ties.
    """
    same = gallery is None
    q = np.ascontiguousarray(query, dtype=np.float32)
    ql = np.asarray(query_labels)
    g = q if same else np.ascontiguousarray(gallery, dtype=np.float32)
    gl = ql if same else np.asarray(gallery_labels)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query {q.shape} and gallery {g.shape} must be [n, d] with the same d")
    if len(ql) != len(q) or len(gl) != len(g):
        raise ValueError(f"{len(ql)} query labels for {len(q)} queries, {len(gl)} gallery labels for {len(g)} "
                         "gallery rows")
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be at least 1")
    available = len(g) - (1 if same else 0)
    relevant = relevant_counts(ql, gl, same)
    max_r = int(relevant.max(initial=0))
    if width is not None and width < 1:
        raise ValueError(f"width={width} must be at least 1")
    width = max(width or 1, max_r)
    if width > available:
        raise ValueError(f"width={width} is more than the {available} gallery items a query can be ranked against")

    # Work in label order: a class is a contiguous slice, so its correct items are found class by class and
    # blocks far from the diagonal hold no correct pair (no label comparison there).
    q_order = np.argsort(ql, kind="stable")
    g_order = q_order if same else np.argsort(gl, kind="stable")
    qs, qls = q[q_order], ql[q_order]
    gs, gls = (qs, qls) if same else (g[g_order], gl[g_order])
    best_sim, best_col = _nearest_correct(qs, qls, gs, gls, same, chunk)
    ranker = _Ranker(width, _seed_bounds(qs, gs, width, same, chunk), best_sim, qls, gls, g_order)
    buf = np.empty(chunk * chunk, dtype=np.float32)
    for a in range(0, len(qs), chunk):
        a_stop = min(a + chunk, len(qs))
        for b in (range(a, len(gs), chunk) if same else range(0, len(gs), chunk)):
            b_stop = min(b + chunk, len(gs))
            s = buf[:(a_stop - a) * (b_stop - b)].reshape(a_stop - a, b_stop - b)
            np.matmul(qs[a:a_stop], gs[b:b_stop].T, out=s)
            if same and a == b:
                np.fill_diagonal(s, -np.inf)
            ranker.block(s, a, b, transposed=False)
            if same and b != a:  # the transposed block: columns b.. as queries against rows a..
                ranker.block(s, b, a, transposed=True)
    ids_sorted, sims_sorted, ahead = ranker.cols, ranker.sims, ranker.ahead

    # Back to the caller's order.
    inv = np.empty_like(q_order)
    inv[q_order] = np.arange(len(q_order))
    has = best_col >= 0
    ids = np.where(ids_sorted >= 0, g_order[np.maximum(ids_sorted, 0)], -1)[inv]
    sims = sims_sorted[inv]
    hits = (ids >= 0) & (gl[np.maximum(ids, 0)] == ql[:, None])
    return GalleryRanking(
        ids=ids, sims=sims, hits=hits, relevant=relevant,
        first_hit=np.where(has, ahead, -1)[inv],
        nearest_correct=np.where(has, g_order[np.maximum(best_col, 0)], -1)[inv],
        nearest_correct_sim=np.where(has, best_sim, np.nan).astype(np.float32)[inv],
    )


def _nearest_correct(qs, qls, gs, gls, same: bool, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarity and (sorted) gallery column of each query's most similar correct item, class by class
    (+inf / -1 without one, so no wrong item is counted ahead of a missing one)."""
    best_sim = np.full(len(qs), np.inf, dtype=np.float32)
    best_col = np.full(len(qs), -1, dtype=np.int64)
    q_classes, q_start = np.unique(qls, return_index=True)
    q_end = np.append(q_start[1:], len(qls))
    g_start = np.searchsorted(gls, q_classes, side="left")
    g_end = np.searchsorted(gls, q_classes, side="right")
    for qa, qb, ga, gb in zip(q_start.tolist(), q_end.tolist(), g_start.tolist(), g_end.tolist(), strict=True):
        if gb - ga - (1 if same else 0) <= 0:
            continue
        for r in range(qa, qb, chunk):
            r_stop = min(r + chunk, qb)
            s = qs[r:r_stop] @ gs[ga:gb].T
            if same:
                s[np.arange(r_stop - r), np.arange(r - qa, r_stop - qa)] = -np.inf
            col = s.argmax(axis=1)  # first of equal maxima: the lowest gallery row of the class
            best_sim[r:r_stop] = s[np.arange(r_stop - r), col]
            best_col[r:r_stop] = ga + col
    return best_sim, best_col


def _seed_bounds(qs: np.ndarray, gs: np.ndarray, width: int, same: bool, chunk: int) -> np.ndarray:
    """A lower bound of each query's final ``width``-th similarity: the ``width``-th best among evenly spaced gallery
    rows (a subset can only do worse). Items below it can never enter the top list, so the blocks admit few."""
    cols = np.unique(np.linspace(0, len(gs) - 1, num=min(len(gs), _SAMPLE)).astype(np.int64))
    bound = np.full(len(qs), np.finfo(np.float32).min, dtype=np.float32)  # finite: a masked self (-inf) stays out
    if len(cols) - (1 if same else 0) < width:
        return bound
    sub = gs[cols]
    for r in range(0, len(qs), chunk):
        r_stop = min(r + chunk, len(qs))
        s = qs[r:r_stop] @ sub.T
        if same:
            rows, pos = np.nonzero(cols[None, :] == np.arange(r, r_stop)[:, None])
            s[rows, pos] = -np.inf
        bound[r:r_stop] = np.partition(s, -width, axis=1)[:, -width]
    return bound


def _sparse_nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a C-contiguous 2-D boolean array that is mostly False, several times faster: the bytes are
    read eight at a time as words and only the nonzero words are expanded."""
    flat = mask.reshape(-1)
    whole = flat.size - flat.size % 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    word, byte = np.nonzero(flat[:whole].reshape(-1, 8)[words])
    idx = np.concatenate([words[word] * 8 + byte, whole + np.flatnonzero(flat[whole:])])
    return np.divmod(idx, mask.shape[1])


class _Ranker:
    """Per query, block after block: the best ``width`` (similarity, gallery column) so far, and the number of
    wrong items at least as similar as its nearest correct one (``best_sim``). A block is read once, for the
    entries at or above min(admission bound, best_sim): the bound is a lower bound of the query's final
    ``width``-th similarity (nothing below it can enter the list), so after the first blocks few entries pass."""

    def __init__(self, width: int, bound: np.ndarray, best_sim: np.ndarray, qls, gls, g_order) -> None:
        n = len(bound)
        self.width = width
        self.sims = np.full((n, width), -np.inf, dtype=np.float32)
        self.cols = np.full((n, width), -1, dtype=np.int64)
        self.ahead = np.zeros(n, dtype=np.int64)
        self.bound, self.best_sim = bound, best_sim
        self.threshold = np.minimum(bound, best_sim)
        self.qls, self.gls, self.g_order = qls, gls, g_order

    def block(self, s: np.ndarray, row0: int, col0: int, transposed: bool) -> None:
        """Queries ``row0..`` against gallery columns ``col0..``: the rows of ``s``, or its columns when
        ``transposed`` (read in place: a transposed view would be scanned against its memory order)."""
        axis = 0 if transposed else 1  # the gallery axis of s
        n, m = s.shape[1 - axis], s.shape[axis]
        queries = slice(row0, row0 + n)

        def per_query(v: np.ndarray) -> np.ndarray:
            return v[None, :] if transposed else v[:, None]

        mask = s >= per_query(self.threshold[queries])
        count_sparse = np.count_nonzero(mask) <= s.size // _DENSE
        if not count_sparse:
            # Many wrong items above the nearest correct one (a weak embedding): count them over the block, and
            # read out only the entries that can enter the lists.
            ahead = s >= per_query(self.best_sim[queries])
            if self.qls[row0] <= self.gls[col0 + m - 1] and self.gls[col0] <= self.qls[row0 + n - 1]:
                g = self.gls[col0:col0 + m]
                ahead &= per_query(self.qls[queries]) != (g[:, None] if transposed else g[None, :])
            self.ahead[queries] += np.count_nonzero(ahead, axis=axis)
            mask = s >= per_query(self.bound[queries])
        i, j = _sparse_nonzero(mask)
        if len(i) == 0:
            return
        vals = s[i, j]
        rows, cols = (j, i) if transposed else (i, j)
        rows += row0
        cols += col0
        correct = self.gls[cols] == self.qls[rows]
        if count_sparse:
            ahead = ~correct & (vals >= self.best_sim[rows])
            self.ahead[queries] += np.bincount(rows[ahead] - row0, minlength=n)
        admit = vals >= self.bound[rows]
        if admit.any():
            self._merge(rows[admit], cols[admit], vals[admit], correct[admit])

    def _merge(self, rows, cols, vals, correct) -> None:
        touched = np.unique(rows)
        w = self.width
        old_cols = self.cols[touched].ravel()
        all_rows = np.concatenate([np.repeat(touched, w), rows])
        all_cols = np.concatenate([old_cols, cols])
        all_vals = np.concatenate([self.sims[touched].ravel(), vals])
        valid = all_cols >= 0
        old_correct = (old_cols >= 0) & (self.gls[np.maximum(old_cols, 0)] == np.repeat(self.qls[touched], w))
        all_correct = np.concatenate([old_correct, correct])
        tie = np.where(valid, self.g_order[np.maximum(all_cols, 0)], np.iinfo(np.int64).max)
        # row, then similarity (descending), then wrong before correct, then gallery row in the caller's order
        order = np.lexsort((tie, all_correct, -all_vals, all_rows))
        all_rows, all_cols, all_vals = all_rows[order], all_cols[order], all_vals[order]
        group_start = np.searchsorted(all_rows, touched)
        rank = np.arange(len(all_rows)) - np.repeat(group_start, np.diff(np.append(group_start, len(all_rows))))
        keep = rank < w
        self.sims[all_rows[keep], rank[keep]] = all_vals[keep]
        self.cols[all_rows[keep], rank[keep]] = all_cols[keep]
        self.bound[touched] = np.maximum(self.bound[touched], self.sims[touched, w - 1])
        self.threshold[touched] = np.minimum(self.bound[touched], self.best_sim[touched])
