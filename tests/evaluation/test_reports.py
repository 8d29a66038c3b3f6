"""The evaluate stage's extra reports from embeddings: the test pool, the thresholds file, the flat figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepmetric.evaluation.knn import rank_gallery
from deepmetric.evaluation.protocol import EvaluateConfig
from deepmetric.evaluation.protocol import TestSplit as Split  # not "Test*" in the module: pytest would collect it
from deepmetric.evaluation.reports import (
    check_validation_split,
    decision_metrics,
    failures,
    pooled_test_images,
    thresholds,
)
from tests.fixtures import clustered_embeddings


def _rows(split, role, labels):
    return pd.DataFrame({"path": [f"{split}/{role}/{i}.png" for i in range(len(labels))], "label": labels,
                         "class_name": [f"c{label}" for label in labels], "split": split, "role": role})


def test_the_test_pool_holds_every_image_once():
    q = _rows("test", "query", [1, 2, 3])
    g = pd.concat([_rows("test", "gallery", [1, 2]), q.iloc[[2]].assign(role="both")], ignore_index=True)
    split = Split(q, g, (1,))
    qx, gx = np.eye(3, 4, dtype=np.float32), np.eye(3, 4, k=1, dtype=np.float32)
    x, y = pooled_test_images(split, qx, gx)
    assert len(x) == 5 and list(y) == [1, 2, 3, 1, 2]  # the query also in the gallery counted once
    np.testing.assert_array_equal(x[3:], gx[:2])
    same, labels = pooled_test_images(Split(q, None, (1,)), qx, None)
    assert same is qx and list(labels) == [1, 2, 3]


def test_thresholds_and_flat_figures_agree():
    split = clustered_embeddings(num_classes=12, dim=8, per_class=5, noise=0.6, seed=0)
    cfg = EvaluateConfig(fmr=[0.1, 0.05], failures={"k": 3, "worst": 2})
    (vx, vy), (tx, ty) = split(np.arange(6)), split(np.arange(6, 12))
    report, doc = thresholds((vx, vy), (tx, ty), cfg)
    assert doc["default_fmr"] == 0.1 and [p["fmr"] for p in doc["operating_points"]] == [0.1, 0.05]
    test = _rows("test", "both", ty)
    fail, csv = failures(rank_gallery(tx, ty, width=3), Split(test, None, (1,)), cfg)
    flat = decision_metrics(report, fail)
    for p in doc["operating_points"]:
        assert flat[f"fnmr@fmr={p['fmr']}"] == p["fnmr_test"] and flat[f"threshold@fmr={p['fmr']}"] == p["threshold"]
    assert csv.splitlines()[0] == "label,class_name,queries,map@r,recall@1" and len(csv.splitlines()) == 7
    assert len(fail["worst_queries"]) == 2 and flat["classes"] == 6


def test_a_manifest_without_validation_classes_is_refused_with_the_minimum():
    manifest = pd.concat([_rows("train", "both", [0, 0, 1]), _rows("test", "both", [2, 2, 3])])
    with pytest.raises(ValueError, match=r"evaluate.fmr=0.001: the validation split has 0 negative pairs \(0 images, "
                                         r"0 classes\) .* at least 10000 .*data.val_classes"):
        check_validation_split(manifest, EvaluateConfig())


def _brute_metrics(q, g, ql, gl, same):
    """MAP@R and Recall@1 from a full numpy sort of every similarity (own row removed in leave-one-out)."""
    s = q @ g.T
    if same:
        np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")
    aps, top1 = [], []
    for i in range(len(q)):
        r = int((gl == ql[i]).sum()) - (1 if same else 0)
        hits = gl[order[i, :r]] == ql[i]
        aps.append(float((np.cumsum(hits) / np.arange(1, r + 1) * hits).sum() / r))
        top1.append(bool(hits[0]))
    return float(np.mean(aps)), float(np.mean(top1))


@pytest.mark.parametrize("same", [True, False])
def test_reranked_metrics_against_a_full_sort_after_dba(same):
    from deepmetric.evaluation.rerank import database_augmentation
    from deepmetric.evaluation.reports import reranked_metrics

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 6)
    x = rng.normal(size=(10, 16))[y] + 0.9 * rng.normal(size=(60, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    rows = _rows("test", "both", y)
    if same:
        q, g, ql, gl, split = x, None, y, y, Split(rows, None, (1,))
    else:
        q, g, ql, gl = x[::2], x[1::2], y[::2], y[1::2]
        split = Split(rows.iloc[::2].reset_index(drop=True), rows.iloc[1::2].reset_index(drop=True), (1,))
    out = reranked_metrics(split, q, g, "dba")
    want = _brute_metrics(q, database_augmentation(q if same else g, n=2, alpha=3.0), ql, gl, same)
    assert out["rerank/map@r"] == pytest.approx(want[0], abs=1e-6) and out["rerank/recall@1"] == want[1]
    assert reranked_metrics(split, q, g, "none") == {}
    plain = _brute_metrics(q, q if same else g, ql, gl, same)
    assert out["rerank/map@r"] != pytest.approx(plain[0])  # the re-ranking did change the lists
