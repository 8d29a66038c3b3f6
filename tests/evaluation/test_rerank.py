"""Re-ranking against dense references written from the papers (every similarity, loops), small generated sets."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.evaluation.rerank import (
    database_augmentation,
    dba_search,
    expand,
    expanded_queries,
    k_reciprocal,
    query_expansion,
)


def _unit(rng, n: int, d: int = 12, classes: int = 10) -> np.ndarray:
    centres = rng.normal(size=(classes, d))
    x = centres[rng.integers(0, classes, size=n)] + 0.8 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _dense_top(q: np.ndarray, g: np.ndarray, k: int, exclude_self: bool):
    s = q.astype(np.float64) @ g.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(s, -np.inf)
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, ids, axis=1), ids


def _alpha_expand(x, neighbours, sims, alpha):
    out = x + sum(max(s, 0) ** alpha * v for s, v in zip(sims, neighbours, strict=True))
    return out / np.linalg.norm(out)


def test_expand_by_hand():
    x = np.array([[1.0, 0.0]], np.float32)
    nb = np.array([[[0.0, 1.0], [0.6, 0.8]]], np.float32)
    out = expand(x, nb, np.array([[0.5, -0.2]], np.float32), alpha=2.0)  # weights 0.25 and 0 (negative)
    np.testing.assert_allclose(out, [[1 / np.hypot(1, 0.25), 0.25 / np.hypot(1, 0.25)]], rtol=1e-6)
    # a padded slot (-inf) adds nothing, even at alpha 0 where every real neighbour weighs 1
    pad = expand(x, nb, np.array([[0.5, -np.inf]], np.float32), alpha=0.0)
    np.testing.assert_allclose(pad, [[1 / np.sqrt(2), 1 / np.sqrt(2)]], rtol=1e-6)


@pytest.mark.parametrize("exclude_self", [True, False])
def test_query_expansion_equals_dense_reference(exclude_self):
    rng = np.random.default_rng(0)
    g = _unit(rng, 120)
    q = g if exclude_self else _unit(rng, 30)
    n, alpha, k = 3, 3.0, 10
    sims, ids = _dense_top(q, g, n, exclude_self)
    q2 = np.stack([_alpha_expand(q[i].astype(np.float64), g[ids[i]], sims[i], alpha) for i in range(len(q))])
    ref_sims, ref_ids = _dense_top(q2, g, k, exclude_self)
    out_sims, out_ids = query_expansion(q, g, k, n=n, alpha=alpha, exclude_self=exclude_self)
    np.testing.assert_array_equal(out_ids, ref_ids)
    np.testing.assert_allclose(out_sims, ref_sims, atol=1e-5)


def test_expanded_queries_take_any_search_function():
    """What a server does: its own index's search (here a brute-force one returning faiss-shaped arrays)."""
    rng = np.random.default_rng(1)
    g, q = _unit(rng, 50), _unit(rng, 7)

    def search(x, k):
        s, i = _dense_top(x, g, k, exclude_self=False)
        return s.astype(np.float32), i

    sims, ids = _dense_top(q, g, 4, False)
    ref = np.stack([_alpha_expand(q[i].astype(np.float64), g[ids[i]], sims[i], 3.0) for i in range(len(q))])
    np.testing.assert_allclose(expanded_queries(q, g, search, n=4, alpha=3.0), ref, atol=1e-6)


def test_database_augmentation_equals_dense_reference():
    rng = np.random.default_rng(2)
    g, q = _unit(rng, 80), _unit(rng, 20)
    sims, ids = _dense_top(g, g, 2, exclude_self=True)
    ref = np.stack([_alpha_expand(g[i].astype(np.float64), g[ids[i]], sims[i], 3.0) for i in range(len(g))])
    np.testing.assert_allclose(database_augmentation(g, n=2, alpha=3.0), ref, atol=1e-6)
    _, ref_ids = _dense_top(q, ref, 5, exclude_self=False)
    np.testing.assert_array_equal(dba_search(q, g, 5, n=2, alpha=3.0)[1], ref_ids)


def _k_reciprocal_dense(pool, nq, same, k, k1, k2, lam):
    """Zhong et al.'s algorithm on the full matrices, loop by loop, with d = (1 - s) / 2."""
    s = pool.astype(np.float64) @ pool.astype(np.float64).T
    d = (1 - s) / 2
    p = len(pool)
    rank = np.argsort(d, axis=1, kind="stable")
    for i in range(p):  # itself first (duplicates aside, it is at distance 0)
        rank[i] = np.concatenate([[i], rank[i][rank[i] != i]])

    def recip(i, kk):
        fwd = rank[i, :kk + 1]
        return np.array([j for j in fwd if i in rank[j, :kk + 1]])

    v = np.zeros((p, p))
    for i in range(p):
        r = recip(i, k1)
        expanded = list(r)
        for j in r:
            cand = recip(j, int(np.around(k1 / 2)))
            if len(np.intersect1d(cand, r)) > 2 / 3 * len(cand):
                expanded.extend(cand)
        members = np.unique(expanded)
        w = np.exp(-d[i, members])
        v[i, members] = w / w.sum()
    v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(p)])
    jaccard = np.array([[1 - np.minimum(v[i], v[j]).sum() / np.maximum(v[i], v[j]).sum() for j in range(p)]
                        for i in range(p)])
    final = (1 - lam) * jaccard + lam * d
    gallery = np.arange(p) if same else np.arange(nq, p)
    out_ids, out_scores = [], []
    for i in range(nq):
        cand = [j for j in gallery if not (same and j == i)]
        shortlist = sorted(cand, key=lambda j: d[i, j])[:k]
        reordered = sorted(shortlist, key=lambda j: final[i, j])
        out_ids.append([j - (0 if same else nq) for j in reordered])
        out_scores.append([1 - final[i, j] for j in reordered])
    return np.array(out_scores), np.array(out_ids)


@pytest.mark.parametrize("same", [True, False])
def test_k_reciprocal_equals_dense_reference(same):
    rng = np.random.default_rng(3)
    q = _unit(rng, 70 if same else 25, classes=6)
    g = None if same else _unit(rng, 50, classes=6)
    pool = q if same else np.concatenate([q, g])
    ref_scores, ref_ids = _k_reciprocal_dense(pool, len(q), same, k=15, k1=8, k2=3, lam=0.3)
    scores, ids = k_reciprocal(q, g, k=15, k1=8, k2=3, lambda_value=0.3, chunk=16)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


def test_k_reciprocal_lifts_a_neighbour_that_shares_the_neighbourhood():
    """Not only the reference: the re-ranking changes orders, in the direction the paper intends."""
    rng = np.random.default_rng(4)
    x = _unit(rng, 200, classes=8)
    plain = np.argsort(-(x @ x.T - 2 * np.eye(len(x))), axis=1)[:, :20]
    _, ids = k_reciprocal(x, None, k=20, k1=10, k2=3)
    assert (ids != plain).any() and all(set(ids[i]) == set(plain[i]) for i in range(len(x)))


def test_neighbourhoods_and_parameters_are_checked():
    x = _unit(np.random.default_rng(5), 40)
    with pytest.raises(ValueError, match=r"k=5 is smaller than the k-reciprocal re-ranking's neighbourhood k1=20"):
        k_reciprocal(x, None, k=5)
    with pytest.raises(ValueError, match=r"k=2 is smaller than the query expansion's neighbourhood n=3"):
        query_expansion(x, x, k=2, n=3)
    with pytest.raises(ValueError, match=r"k2=30 must be in \[1, k1 \+ 1 = 21\]"):
        k_reciprocal(x, None, k=25, k2=30)
    with pytest.raises(ValueError, match=r"lambda_value=1.5"):
        k_reciprocal(x, None, k=25, lambda_value=1.5)
    with pytest.raises(ValueError, match=r"alpha=-1"):
        query_expansion(x, x, k=5, alpha=-1)
    with pytest.raises(ValueError, match=r"n=40 needs a gallery of more than 40"):
        database_augmentation(x, n=40)


def test_memory_is_bounded(traced_peak):
    """8,000 vectors: the N×N distance matrix of the paper's code would be 512 MB (float64)."""
    x = _unit(np.random.default_rng(6), 8_000, d=8, classes=1500)
    (_, ids), peak = traced_peak(k_reciprocal, x, None, k=30, k1=10, k2=3)
    assert ids.shape == (8_000, 30)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.0f} MB"
    for fn in (lambda: query_expansion(x, x, k=30, exclude_self=True), lambda: database_augmentation(x)):
        _, peak = traced_peak(fn)
        assert peak < 16 * 2**20, f"peak {peak / 2**20:.0f} MB"
