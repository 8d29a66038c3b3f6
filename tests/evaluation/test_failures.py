"""The failure report against brute force over a full sort of every similarity, small generated sets."""

from __future__ import annotations

import io
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from deepmetric.evaluation.failures import (
    confused_pairs,
    failure_report,
    per_category_table,
    per_class_table,
    worst_queries,
    worst_queries_grid,
)
from deepmetric.evaluation.knn import rank_gallery


def _split(seed: int, n: int = 240, classes: int = 24, d: int = 10):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    centres = rng.normal(size=(classes, d))
    x = centres[y] + 1.1 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _full_sort(x, y):
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :-1]
    hits = y[order] == y[:, None]
    r = np.array([(y == c).sum() - 1 for c in y])
    ap = np.full(len(y), np.nan)
    for i in range(len(y)):
        if r[i]:
            ap[i] = sum(hits[i, :j + 1].sum() / (j + 1) for j in range(r[i]) if hits[i, j]) / r[i]
    first = np.array([np.argmax(h) if h.any() else -1 for h in hits])
    return order, hits, r, ap, first


def test_per_class_and_per_category_equal_brute_force():
    x, y = _split(0)
    categories = np.array(["sofa", "lamp", "mug"])[y % 3]
    order, hits, r, ap, _ = _full_sort(x, y)
    ranking = rank_gallery(x, y, width=15, chunk=50)
    table = per_class_table(ranking, y, {c: f"class {c}" for c in range(24)})
    for key, keys, got in (("label", y, table), ("category", categories, per_category_table(ranking, categories))):
        groups = defaultdict(list)
        for i in range(len(y)):
            if r[i]:
                groups[keys[i]].append((ap[i], float(hits[i, 0])))
        assert len(got) == len(groups)
        for row in got.to_dict(orient="records"):
            vals = np.array(groups[row[key]])
            assert row["queries"] == len(vals)
            assert row["map@r"] == pytest.approx(vals[:, 0].mean(), abs=1e-12)
            assert row["recall@1"] == pytest.approx(vals[:, 1].mean(), abs=1e-12)
        assert got["map@r"].is_monotonic_increasing  # worst first
    assert table["class_name"].iloc[0] == f"class {table['label'].iloc[0]}"


def test_confused_pairs_equal_brute_force():
    x, y = _split(1)
    order, hits, *_ = _full_sort(x, y)
    k = 4
    directed = Counter()
    for i in range(len(y)):
        for j in order[i, :k]:
            if y[j] != y[i]:
                directed[(y[i], y[j])] += 1
    queries = Counter(y.tolist())
    expected = {}
    for (a, b), c in directed.items():
        lo, hi = min(a, b), max(a, b)
        expected[(lo, hi)] = expected.get((lo, hi), 0) + c
    got = confused_pairs(rank_gallery(x, y, width=15, chunk=64), y, y, k=k, top=1000)
    assert len(got) == len(expected)
    for row in got.to_dict(orient="records"):
        a, b = row["class_a"], row["class_b"]
        assert a < b
        assert row["a_to_b"] == directed[(a, b)] and row["b_to_a"] == directed[(b, a)]
        assert row["share"] == pytest.approx(expected[(a, b)] / ((queries[a] + queries[b]) * k))
    assert got["share"].is_monotonic_decreasing
    assert len(confused_pairs(rank_gallery(x, y, width=15), y, y, k=k, top=3)) == 3


def test_worst_queries_equal_brute_force():
    x, y = _split(2)
    order, hits, r, ap, first = _full_sort(x, y)
    worst = worst_queries(rank_gallery(x, y, width=15, chunk=40), y, y, n=6, k=3)
    valid = np.flatnonzero(r > 0)
    expected = sorted(valid.tolist(), key=lambda i: (ap[i], -first[i], i))[:6]
    assert [w["query"] for w in worst] == expected
    for w in worst:
        i = w["query"]
        assert w["map@r"] == pytest.approx(ap[i]) and w["relevant"] == r[i] and w["label"] == y[i]
        assert [nb["gallery"] for nb in w["neighbours"]] == order[i, :3].tolist()
        assert [nb["correct"] for nb in w["neighbours"]] == hits[i, :3].tolist()
        assert w["nearest_correct"]["gallery"] == order[i, first[i]]
        assert w["nearest_correct"]["rank"] == first[i] + 1


def test_separate_gallery_and_report_is_json():
    x, y = _split(3)
    q, ql, g, gl = x[:80], y[:80], x[80:], y[80:]
    categories = np.where(ql < 12, "a", "b")
    ranking = rank_gallery(q, ql, g, gl, width=12)
    report = failure_report(ranking, ql, gl, query_categories=categories, k=5, worst=4, pairs=5, classes=3)
    again = json.loads(json.dumps(report))
    assert again == report
    assert set(report) == {"summary", "worst_classes", "confused_pairs", "worst_queries", "per_category"}
    assert len(report["worst_classes"]) == 3 and len(report["worst_queries"]) == 4
    assert {"category/a/map@r", "category/b/map@r", "classes"} <= set(report["summary"])
    assert all(0 <= nb["gallery"] < len(g) for w in report["worst_queries"] for nb in w["neighbours"])


def test_k_beyond_the_ranking_width_is_refused():
    x, y = _split(4)
    ranking = rank_gallery(x, y, width=15)
    with pytest.raises(ValueError, match=r"k=20 outside \[1, 15\]"):
        worst_queries(ranking, y, y, k=20)


def test_grid_draws_each_query_its_neighbours_and_nearest_correct():
    from PIL import Image

    x, y = _split(5)
    worst = worst_queries(rank_gallery(x, y, width=15), y, y, n=3, k=4)
    asked: dict[str, list[int]] = {"query": [], "gallery": []}

    def loader(kind):
        def load(i):
            asked[kind].append(i)
            return np.full((8, 8, 3), i % 255, dtype=np.uint8)
        return load

    png = worst_queries_grid(worst, loader("query"), loader("gallery"))
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.width > img.height  # 3 rows of 6 panels
    assert asked["query"] == [w["query"] for w in worst]
    assert asked["gallery"] == [j for w in worst for j in
                                [nb["gallery"] for nb in w["neighbours"]] + [w["nearest_correct"]["gallery"]]]


def test_memory_is_bounded(traced_peak):
    """The report over 8,000 queries reads the ranking in chunks: no [N, N] and no per-pair table of all classes."""
    rng = np.random.default_rng(6)
    y = rng.integers(0, 1500, size=8_000)
    x = rng.normal(size=(8_000, 8)).astype(np.float32)
    ranking = rank_gallery(x, y, width=10, chunk=1024)
    report, peak = traced_peak(failure_report, ranking, y, y, query_categories=y % 12, k=10)
    assert len(report["per_category"]) == 12
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MB"
