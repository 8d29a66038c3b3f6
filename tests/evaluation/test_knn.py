"""`rank_gallery` against a brute-force ranking (every similarity, sorted), blocks of every size, exact ties."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.evaluation.knn import knn, rank_gallery


def _tied_set(rng, n: int, classes: int, dim: int = 3):
    """Small integer vectors: dot products are exact in float32 whatever the summation order, and many tie."""
    x = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    return x, rng.integers(0, classes, size=n)


def _brute_force(q, ql, g, gl, same: bool, width: int):
    """The documented order — similarity descending, then wrong before correct, then gallery row — by sorting
    every similarity of every query."""
    s = (q.astype(np.float64) @ g.astype(np.float64).T)
    ids = np.zeros((len(q), width), dtype=np.int64)
    first = np.full(len(q), -1)
    nearest = np.full(len(q), -1)
    for i in range(len(q)):
        cols = np.array([j for j in range(len(g)) if not (same and j == i)])
        correct = gl[cols] == ql[i]
        order = np.lexsort((cols, correct, -s[i, cols]))
        ranked, ranked_correct = cols[order], correct[order]
        ids[i] = ranked[:width]
        if ranked_correct.any():
            first[i] = int(np.argmax(ranked_correct))
            # the nearest correct item: the most similar one, the lowest row among equals
            best = s[i, cols[correct]].max()
            nearest[i] = min(j for j in cols[correct] if s[i, j] == best)
    return ids, first, nearest


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
@pytest.mark.parametrize("same", [True, False])
def test_rank_gallery_equals_brute_force_with_ties(chunk, same):
    rng = np.random.default_rng(chunk + 10 * same)
    q, ql = _tied_set(rng, 40, 6)
    g, gl = (q, ql) if same else _tied_set(rng, 33, 7)  # a query class (6) may be missing from the gallery
    r = rank_gallery(q, ql, None if same else g, None if same else gl, width=9, chunk=chunk)
    ids, first, nearest = _brute_force(q, ql, g, gl, same, 9)
    np.testing.assert_array_equal(r.ids, ids)
    np.testing.assert_array_equal(r.first_hit, first)
    np.testing.assert_array_equal(r.nearest_correct, nearest)
    np.testing.assert_array_equal(r.hits, gl[ids] == ql[:, None])
    np.testing.assert_array_equal(r.sims, np.take_along_axis(q @ g.T, ids, axis=1))
    has = nearest >= 0
    np.testing.assert_array_equal(r.nearest_correct_sim[has], (q @ g.T)[np.arange(len(q))[has], nearest[has]])
    assert np.isnan(r.nearest_correct_sim[~has]).all()
    expected_r = np.array([(gl == c).sum() - (1 if same else 0) for c in ql])
    np.testing.assert_array_equal(r.relevant, expected_r)


def test_rank_gallery_is_independent_of_row_order():
    """The order is a property of the vectors and labels, not of how the split is arranged."""
    rng = np.random.default_rng(3)
    x, y = _tied_set(rng, 50, 5)
    perm = rng.permutation(50)
    a = rank_gallery(x, y, width=12, chunk=8)
    b = rank_gallery(x[perm], y[perm], width=12, chunk=8)
    np.testing.assert_array_equal(b.first_hit, a.first_hit[perm])
    np.testing.assert_array_equal(b.hits, a.hits[perm])
    np.testing.assert_array_equal(b.sims, a.sims[perm])


def test_rank_gallery_matches_faiss_knn_without_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 30, size=300)
    r = rank_gallery(x, y, width=25, chunk=64)
    _, idx = knn(x, x, 25, exclude_self=True)
    np.testing.assert_array_equal(r.ids, idx)


def test_rank_gallery_checks_its_inputs():
    x = np.eye(4, dtype=np.float32)
    y = np.array([0, 0, 0, 1])
    assert rank_gallery(x, y, width=1).width == 2  # raised to the largest R: MAP@R reads the top R
    with pytest.raises(ValueError, match=r"width=4 is more than the 3 gallery items"):
        rank_gallery(x, y, width=4)
    with pytest.raises(ValueError, match=r"width=0 must be at least 1"):
        rank_gallery(x, y, width=0)
    with pytest.raises(ValueError, match="3 query labels for 4 queries"):
        rank_gallery(x, y[:3])
    with pytest.raises(ValueError, match="same d"):
        rank_gallery(x, y, x[:, :3], y)


def test_knn_masks_self_not_first_column():
    # Row 0 and row 1 are identical: the neighbour of 0 must be 1 even if faiss ranks 1 before 0.
    x = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    _, idx = knn(x, x, 2, exclude_self=True)
    for i in range(len(x)):
        assert i not in idx[i]
    assert idx[0, 0] == 1 and idx[1, 0] == 0


def test_knn_rejects_bad_k():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="outside"):
        knn(x, x, 3, exclude_self=True)


def test_rank_gallery_memory_is_bounded(traced_peak):
    """8,000 queries: the similarity matrix would be 256 MB (float32); blocks of 1,024 rows keep the peak small."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 1500, size=8_000)
    x = rng.normal(size=(8_000, 8)).astype(np.float32)
    ranking, peak = traced_peak(rank_gallery, x, y, chunk=1024)
    assert ranking.ids.shape[0] == 8_000
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MB"
