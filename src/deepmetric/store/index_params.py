"""The Milvus index equivalent to a bundle's faiss index: :func:`milvus_index`.

Read from the index object itself (not from the factory string), so that whatever chose the factory (a fixed
string, ``index.factory: auto``) the collection gets the same structure and search knobs:

============================  ==========  ===========================================  ======================
faiss (inner product)          Milvus      build parameters                             search parameters
============================  ==========  ===========================================  ======================
``IndexFlat``                  FLAT        —                                            —
``IndexHNSWFlat``              HNSW        ``M``, ``efConstruction``                    ``ef`` (= efSearch)
``IndexIVFFlat``               IVF_FLAT    ``nlist``                                    ``nprobe``
``IndexIVFPQ``                 IVF_PQ      ``nlist``, ``m``, ``nbits``                   ``nprobe``
============================  ==========  ===========================================  ======================

Anything else (a pre-transform such as OPQ, scalar quantizers, L2 metric) is refused with the type named: the
collection would not answer like the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MilvusIndex", "UnsupportedIndex", "milvus_index"]

METRIC = "IP"


class UnsupportedIndex(ValueError):
    """A faiss index with no Milvus equivalent."""


@dataclass(frozen=True)
class MilvusIndex:
    """An index type with its build and search parameters (metric: inner product)."""

    index_type: str
    params: dict[str, int] = field(default_factory=dict)
    search: dict[str, int] = field(default_factory=dict)
    metric_type: str = METRIC

    def as_dict(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "metric_type": self.metric_type, "params": dict(self.params),
                "search": dict(self.search)}


def milvus_index(index: Any) -> MilvusIndex:
    """The Milvus index of faiss ``index``; raises :class:`UnsupportedIndex` naming its type."""
    import faiss

    idx = faiss.downcast_index(index)
    name = type(idx).__name__
    if idx.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise UnsupportedIndex(f"the bundle's index ({name}) does not use inner product; a gallery store needs "
                               "the bundle's metric (inner product)")
    if isinstance(idx, faiss.IndexFlat):
        return MilvusIndex("FLAT")
    if isinstance(idx, faiss.IndexHNSWFlat):
        h = idx.hnsw
        return MilvusIndex("HNSW", {"M": int(h.nb_neighbors(1)), "efConstruction": int(h.efConstruction)},
                           {"ef": int(h.efSearch)})
    if isinstance(idx, faiss.IndexIVFPQ):
        return MilvusIndex("IVF_PQ", {"nlist": int(idx.nlist), "m": int(idx.pq.M), "nbits": int(idx.pq.nbits)},
                           {"nprobe": int(idx.nprobe)})
    if isinstance(idx, faiss.IndexIVFFlat):
        return MilvusIndex("IVF_FLAT", {"nlist": int(idx.nlist)}, {"nprobe": int(idx.nprobe)})
    raise UnsupportedIndex(f"the bundle's index type {name} has no Milvus equivalent (supported: Flat, HNSW*,Flat, "
                           "IVF*,Flat, IVF*,PQ*): rebuild the gallery with one of those factories")
