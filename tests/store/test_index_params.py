"""The Milvus index equivalent to a faiss index: structure and search knobs read from the index itself."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from deepmetric.index.build import apply_search_params, build_index
from deepmetric.store.index_params import UnsupportedIndex, milvus_index


def _index(factory: str, search: dict | None = None, ef_construction: int | None = None):
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return build_index(x, factory, search or {}, ef_construction, 0)


@pytest.mark.parametrize("factory, search, ef_construction, want", [
    ("Flat", {}, None, ("FLAT", {}, {})),
    ("HNSW8", {"efSearch": 40}, 24, ("HNSW", {"M": 8, "efConstruction": 24}, {"ef": 40})),
    ("IVF4,Flat", {"nprobe": 3}, None, ("IVF_FLAT", {"nlist": 4}, {"nprobe": 3})),
    ("IVF4,PQ4x4", {"nprobe": 2}, None, ("IVF_PQ", {"nlist": 4, "m": 4, "nbits": 4}, {"nprobe": 2})),
])
def test_each_supported_index_maps_to_its_milvus_twin(factory, search, ef_construction, want):
    got = milvus_index(_index(factory, search, ef_construction))
    assert (got.index_type, got.params, got.search) == want and got.metric_type == "IP"


def test_search_knobs_follow_the_index_not_the_factory_string():
    index = _index("HNSW8", {"efSearch": 16})
    apply_search_params(index, {"efSearch": 128})
    assert milvus_index(index).search == {"ef": 128}


@pytest.mark.parametrize("index, words", [
    (faiss.IndexFlatL2(8), "inner product"),
    (faiss.index_factory(16, "SQ8", faiss.METRIC_INNER_PRODUCT), "IndexScalarQuantizer has no Milvus equivalent"),
    (faiss.index_factory(16, "OPQ4,IVF4,PQ4", faiss.METRIC_INNER_PRODUCT), "IndexPreTransform"),
])
def test_indexes_without_a_twin_are_refused_by_type(index, words):
    with pytest.raises(UnsupportedIndex, match=words):
        milvus_index(index)
