import numpy as np
import pytest

from deepmetric.evaluation.knn import rank_gallery
from deepmetric.evaluation.metrics import (
    ap_at_r,
    evaluate_embeddings,
    map_at_r,
    nmi,
    per_query_metrics,
    recall_at_k,
    recall_from_first_hit,
)


def test_map_at_r_hand_computed():
    # R = 3 relevant items; top-3 = [hit, miss, hit] -> (1 + 2/3) / 3
    nl = np.array([[0, 1, 0, 0]])
    assert map_at_r(nl, np.array([0]), np.array([3])) == pytest.approx((1 + 2 / 3) / 3)
    # divided by R, not by the number of hits (the D&C repo's "mARP")
    assert map_at_r(np.array([[0, 1, 1]]), np.array([0]), np.array([3])) == pytest.approx(1 / 3)


def test_recall_at_k_is_hit_at_k():
    nl = np.array([[1, 0, 2], [2, 2, 2]])
    r = recall_at_k(nl, np.array([0, 0]), [1, 2, 3])
    assert r == {1: 0.0, 2: 0.5, 3: 0.5}


def test_matches_pytorch_metric_learning_accuracy_calculator():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    centres = rng.normal(size=(10, 16))
    emb = centres[labels] + rng.normal(scale=0.9, size=(60, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    ours = evaluate_embeddings(emb, labels, ks=(1,), with_nmi=False)
    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1", "r_precision"),
                              k="max_bin_count")
    theirs = calc.get_accuracy(emb, labels, emb, labels, ref_includes_query=True)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)


def test_separate_gallery_and_perfect_embedding():
    labels = np.repeat(np.arange(5), 4)
    emb = np.eye(5, dtype=np.float32)[labels]
    q, g = emb[::2], emb[1::2]
    out = evaluate_embeddings(q, labels[::2], g, labels[1::2], ks=(1, 2))
    assert out["recall@1"] == 1.0 and out["map@r"] == 1.0
    assert out["nmi"] == pytest.approx(1.0)


def test_nmi_random_is_low_and_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = rng.integers(0, 10, size=200)
    a, b = nmi(x, y, seed=3), nmi(x, y, seed=3)
    assert a == b and a < 0.3


def test_recall_from_first_hit_is_hit_at_k():
    # ranks of the nearest correct item: 0 (hit at 1), 1, 5, none in the gallery
    r = recall_from_first_hit(np.array([0, 1, 5, -1]), [1, 2, 6, 100])
    assert r == {1: 0.25, 2: 0.5, 6: 0.75, 100: 0.75}


def test_ap_at_r_per_query():
    hits = np.array([[True, False, True, True], [False, False, False, False], [True, True, False, False]])
    ap = ap_at_r(hits, np.array([3, 0, 2]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3) and np.isnan(ap[1]) and ap[2] == 1.0


def test_evaluate_embeddings_equals_the_definitions_on_a_full_sort():
    """Recall@K for K far beyond a block and the top-R metrics, against every similarity sorted (no ties here)."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 40, size=400)
    x = rng.normal(size=(400, 8)).astype(np.float32) + 0.8 * rng.normal(size=(40, 8)).astype(np.float32)[labels]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :399]
    nl = labels[order]
    r = np.array([(labels == c).sum() - 1 for c in labels])
    ks = (1, 10, 100, 399)
    out = evaluate_embeddings(x, labels, ks=ks, with_nmi=False, chunk=64)
    for k, v in recall_at_k(nl, labels, ks).items():
        assert out[f"recall@{k}"] == pytest.approx(v, abs=1e-12)
    assert out["map@r"] == pytest.approx(map_at_r(nl, labels, r), abs=1e-12)
    valid = r > 0
    rel = (nl == labels[:, None]) & (np.arange(399)[None, :] < r[:, None])
    assert out["r_precision"] == pytest.approx((rel.sum(axis=1)[valid] / r[valid]).mean(), abs=1e-12)
    per_query = per_query_metrics(rank_gallery(x, labels, chunk=64))
    np.testing.assert_allclose(per_query["recall@1"], (nl[:, 0] == labels).astype(float))


def test_recall_at_a_large_k_in_bounded_memory(traced_peak):
    """Recall@5,000 over 8,000 queries without an [8,000, 5,000] neighbour list (320 MB of int64 ids)."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2000, size=8_000)
    x = rng.normal(size=(8_000, 8)).astype(np.float32)
    out, peak = traced_peak(evaluate_embeddings, x, labels, ks=(1, 5_000), with_nmi=False, chunk=1024)
    assert 0 < out["recall@1"] < out["recall@5000"] < 1
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MB"
