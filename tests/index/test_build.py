"""deepmetric.index.build: a faiss index from a factory string (Flat / HNSW / IVF / IVF+PQ), search parameters,
serialization, the report against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.index.build import (
    IndexBuildError,
    build_index,
    deserialize_index,
    evaluate_index,
    serialize_index,
)


def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "factory,search",
    [("Flat", {}), ("HNSW16", {"efSearch": 64}), ("IVF8,Flat", {"nprobe": 8}), ("IVF8,PQ8x4", {"nprobe": 8})],
)
def test_factories_build_search_and_roundtrip(factory, search):
    x = _unit(600, 32)
    index = build_index(x, factory, search)
    assert index.ntotal == 600 and index.d == 32 and index.is_trained
    report = evaluate_index(index, x, np.arange(0, 600, 3), np.arange(600) % 20, [1, 10], latency_queries=20)
    # All queries are in the gallery, so exact top-1 is the query itself.
    floor = {"Flat": 1.0, "HNSW16": 0.95, "IVF8,Flat": 1.0, "IVF8,PQ8x4": 0.2}[factory]
    assert report["recall@1_vs_exact"] >= floor
    assert report["latency"]["index"]["single_query"]["p99_ms"] >= report["latency"]["index"]["single_query"]["p50_ms"] > 0
    again = deserialize_index(serialize_index(index))
    np.testing.assert_array_equal(again.search(x[:5], 3)[1], index.search(x[:5], 3)[1])


def test_nprobe_changes_recall_of_ivf():
    x = _unit(2000, 16, seed=1)
    lo = build_index(x, "IVF32,Flat", {"nprobe": 1})
    hi = build_index(x, "IVF32,Flat", {"nprobe": 32})
    q = np.arange(0, 2000, 10)
    r_lo = evaluate_index(lo, x, q, np.zeros(2000), [10], 5)["recall@10_vs_exact"]
    r_hi = evaluate_index(hi, x, q, np.zeros(2000), [10], 5)["recall@10_vs_exact"]
    assert r_hi == pytest.approx(1.0) and r_lo < r_hi


@pytest.mark.parametrize(
    "factory,search,message",
    [
        ("NoSuchIndex", {}, "faiss cannot build index.factory 'NoSuchIndex'"),
        ("IVF4096,Flat", {}, "needs at least 4096 gallery vectors"),
        ("IVF4,PQ5", {}, "PQ5"),
        ("Flat", {"nprobe": 4}, "nprobe is set but the index is not IVF"),
        ("Flat", {"efSearch": 4}, "efSearch is set but the index is not HNSW"),
    ],
)
def test_bad_factory_or_parameters_name_the_problem(factory, search, message):
    with pytest.raises(IndexBuildError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_index(_unit(300, 32), factory, search)


def test_training_on_an_evenly_spaced_sample_and_polysemous_switch():
    import faiss

    x = _unit(2000, 8, seed=3)
    index = build_index(x, "IVF16,PQ2", train_size=700, polysemous_training=False)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    assert not ivf.do_polysemous_training and index.ntotal == 2000
    same = faiss.index_factory(8, "IVF16,PQ2", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(same).cp.seed = 0
    faiss.downcast_index(faiss.extract_index_ivf(same)).do_polysemous_training = False
    same.train(x[np.linspace(0, 1999, 700).astype(np.int64)])
    whole = build_index(x, "IVF16,PQ2", polysemous_training=False)  # trained on all 2000
    centroids = [faiss.rev_swig_ptr(faiss.downcast_index(faiss.extract_index_ivf(i).quantizer).get_xb(), 16 * 8)
                 for i in (index, same, whole)]
    np.testing.assert_array_equal(centroids[0], centroids[1])
    assert not np.array_equal(centroids[0], centroids[2])


def test_read_index_file_maps_or_refuses_naming_the_problem(tmp_path):
    import faiss

    from deepmetric.index.build import read_index_file

    index = build_index(_unit(300, 8), "HNSW8", {"efSearch": 16})
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    for mmap in (True, False):
        back = read_index_file(str(tmp_path / "i.faiss"), mmap=mmap)
        assert back.ntotal == 300 and (back.search(_unit(4, 8, 1), 3)[1] == index.search(_unit(4, 8, 1), 3)[1]).all()
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(IndexBuildError, match="not a readable faiss index"):
        read_index_file(str(tmp_path / "bad.faiss"))
