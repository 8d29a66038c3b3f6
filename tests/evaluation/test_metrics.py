import numpy as np
import pytest

from deepmetric.evaluation.knn import knn
from deepmetric.evaluation.metrics import evaluate_embeddings, map_at_r, nmi, recall_at_k


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
