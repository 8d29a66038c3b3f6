"""`index.factory: auto`: which faiss index a gallery of ``n`` vectors of dimension ``dim`` gets.

The index kinds (one registry, :data:`KINDS`), how each one's factory string follows from the gallery size and
dimension, and the rule measured by ``benchmarks/index/run.py`` (its README holds the cost curves and the table
this rule encodes): among the indexes that keep recall@10 ≥ 0.95 of exact search, the one with the most queries/s
at batch 1; where a smaller index (serialized bytes) comes within 10 % of those queries/s, the smaller one.

Pure functions: nothing here imports faiss.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

AUTO = "auto"
"""The ``index.factory`` value that asks :func:`choose_factory` for the index."""
RECALL_TARGET = 0.95
"""recall@10 against exact inner-product search that an index must keep to be chosen."""
QPS_TIE = 0.10
"""Queries/s within this fraction of the best count as a tie, which the smaller index wins."""

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
IVF_MIN_POINTS_PER_LIST = 39
"""faiss' k-means wants at least 39 training points per centroid; fewer and it warns and clusters badly."""
IVF_TRAIN_POINTS_PER_LIST = 40
"""Training sample of the coarse quantizer: this many gallery vectors per inverted list (at most the gallery)."""


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the power of two nearest 4·√n (the low end of faiss' 4√n–16√n), fewer
    where the gallery cannot give every list :data:`IVF_MIN_POINTS_PER_LIST` training points; 0 below 16 lists."""
    _check_positive(n=n)
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    while nlist >= 16 and n < IVF_MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist if nlist >= 16 else 0


def pq_m(dim: int) -> int:
    """Product-quantizer sub-vectors for ``dim``: one byte per 4 dimensions (16× smaller than float32), the
    largest divisor of ``dim`` not above ``dim / 4``."""
    _check_positive(dim=dim)
    m = max(dim // 4, 1)
    while dim % m:
        m -= 1
    return m


@dataclass(frozen=True)
class IndexKind:
    """One family of faiss index, its factory string as a function of (n, dim) and its search-time knob."""

    name: str
    label: str
    search_param: str | None = None
    sweep: tuple[int, ...] = ()
    """Values of ``search_param`` the benchmark tries, in increasing cost, to reach :data:`RECALL_TARGET`."""
    trains: bool = False
    """Needs a training pass (k-means) over a sample of the gallery before vectors are added."""
    build: Mapping[str, int] = field(default_factory=dict)
    """Build-time settings beyond the factory string: ``ef_construction`` (HNSW), ``polysemous_training``
    (IVF-PQ, 0: off)."""
    _factory: str = ""

    def factory(self, n: int, dim: int) -> str:
        _check_positive(n=n, dim=dim)
        nlist = ivf_nlist(n)
        if "{nlist}" in self._factory and not nlist:
            raise ValueError(f"{self.label} needs at least {16 * IVF_MIN_POINTS_PER_LIST} vectors "
                             f"(16 lists × {IVF_MIN_POINTS_PER_LIST}); got n={n}")
        return self._factory.format(nlist=nlist, m=pq_m(dim), M=HNSW_M)

    def train_size(self, n: int) -> int:
        """Gallery vectors to train on (0: no training)."""
        return min(n, IVF_TRAIN_POINTS_PER_LIST * ivf_nlist(n)) if self.trains else 0


def _steps(lo: int, hi: int) -> tuple[int, ...]:
    """lo, then ×√2 (rounded: 1, 2, 3, 4, 6, 8, 11, 16, …) up to hi: fine enough that the value chosen to reach
    the recall target overshoots it by at most one half-octave of cost."""
    out: list[int] = []
    i = 0
    while (v := round(lo * 2 ** (i / 2))) <= hi:
        if not out or v > out[-1]:
            out.append(v)
        i += 1
    return tuple(out)


_NO_POLYSEMOUS = {"polysemous_training": 0}
"""faiss' index_factory trains polysemous codes for IVF-PQ (most of its training time at 10^4 vectors); they serve
only Hamming-threshold filtering (``polysemous_ht``), which these searches do not use."""
KINDS: dict[str, IndexKind] = {k.name: k for k in (
    IndexKind("flat", "Flat", _factory="Flat"),
    IndexKind("hnsw", "HNSW", "efSearch", _steps(10, 4096),
              build={"ef_construction": HNSW_EF_CONSTRUCTION}, _factory="HNSW{M}"),
    IndexKind("ivf_flat", "IVF-Flat", "nprobe", _steps(1, 2 ** 14), trains=True, _factory="IVF{nlist},Flat"),
    IndexKind("ivf_sq8", "IVF-SQ8", "nprobe", _steps(1, 2 ** 14), trains=True, _factory="IVF{nlist},SQ8"),
    IndexKind("ivf_pq", "IVF-PQ", "nprobe", _steps(1, 2 ** 14), trains=True, build=_NO_POLYSEMOUS,
              _factory="IVF{nlist},PQ{m}"),
    IndexKind("opq_ivf_pq", "OPQ+IVF-PQ", "nprobe", _steps(1, 2 ** 14), trains=True, build=_NO_POLYSEMOUS,
              _factory="OPQ{m},IVF{nlist},PQ{m}"),
)}
"""Every index kind the benchmark measures and the rule may choose, by name."""


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class Measured:
    """One index kind's figures at one (n, dim), as the benchmark reports them."""

    kind: str
    recall_at_10: float
    qps_batch1: float
    index_bytes: int
    search: Mapping[str, int] = field(default_factory=dict)


def best_index(measured: Iterable[Measured]) -> Measured | None:
    """The rule applied to one (n, dim): among the indexes with recall@10 ≥ :data:`RECALL_TARGET`, the most
    queries/s at batch 1; the smallest index (bytes) among those within :data:`QPS_TIE` of it. ``None`` when no
    index reaches the target."""
    ok = [m for m in measured if m.recall_at_10 >= RECALL_TARGET]
    if not ok:
        return None
    top = max(m.qps_batch1 for m in ok)
    near = [m for m in ok if m.qps_batch1 >= (1 - QPS_TIE) * top]
    return min(near, key=lambda m: (m.index_bytes, -m.qps_batch1))


def as_dict(m: Measured) -> dict[str, Any]:
    return {"kind": m.kind, "recall@10": m.recall_at_10, "qps_batch1": m.qps_batch1, "index_bytes": m.index_bytes,
            "search": dict(m.search)}


@dataclass(frozen=True)
class Evidence:
    """The rule's winner at one measured (n, dim) of benchmarks/index/results.json, with its tuned knob."""

    dim: int
    n: int
    kind: str
    search: Mapping[str, int]
    recall_at_10: float
    qps_batch1: float


EVIDENCE: tuple[Evidence, ...] = (
    Evidence(128, 10_000, 'ivf_flat', {'nprobe': 11}, 0.9552, 43672.0),
    Evidence(128, 100_000, 'hnsw', {'efSearch': 14}, 0.9589, 11581.8),
    Evidence(128, 1_000_000, 'hnsw', {'efSearch': 80}, 0.9535, 1727.5),
    Evidence(512, 10_000, 'hnsw', {'efSearch': 10}, 0.9768, 20805.7),
    Evidence(512, 100_000, 'ivf_sq8', {'nprobe': 11}, 0.9678, 4262.6),
    Evidence(512, 1_000_000, 'hnsw', {'efSearch': 80}, 0.9572, 1180.2),
)
"""Filled from the benchmark's ``winners`` (tests/index/test_auto.py checks the two agree)."""
FLAT_SMALLEST: dict[int, float] = {128: 4888.3, 512: 1228.9}
"""Flat's queries/s (batch 1, one core) at the smallest measured size, by dimension (from the same results)."""


@dataclass(frozen=True)
class Choice:
    """What ``index.factory: auto`` builds for a gallery, and why."""

    kind: str
    factory: str
    search: dict[str, int]
    build: dict[str, int]
    train_size: int
    why: str


def choose_factory(n: int, dim: int) -> Choice:
    """The index for ``n`` vectors of dimension ``dim``: the benchmark's winner at the smallest measured size ≥ n
    (its search knob was tuned there, so it keeps the recall target at n) for the smallest measured dimension
    ≥ dim; beyond the measured range, the largest one's, said in ``why``. Below the smallest measured size,
    exact search (Flat): recall 1, no training, no knob, and the smallest index, at a cost per query that
    shrinks with ``n`` below what the benchmark measured for Flat at that size (:data:`FLAT_SMALLEST`)."""
    _check_positive(n=n, dim=dim)
    dims = sorted({e.dim for e in EVIDENCE})
    table_dim = next((d for d in dims if d >= dim), dims[-1])
    rows = sorted((e for e in EVIDENCE if e.dim == table_dim), key=lambda e: e.n)
    if n < rows[0].n:
        flat = FLAT_SMALLEST[table_dim]
        return Choice("flat", "Flat", {}, {}, 0,
                      f"Flat for {n:,} × {dim}-d: below the smallest measured gallery ({rows[0].n:,} × "
                      f"{table_dim}-d, where exact search took {1e3 / flat:.2f} ms per query on one core), "
                      "exact search: recall 1, no training, the smallest index (benchmarks/index/README.md)")
    row = next((e for e in rows if e.n >= n), rows[-1])
    kind = KINDS[row.kind]
    notes = []
    if dim > table_dim:
        notes.append(f"dim {dim} is above the largest measured ({table_dim})")
    if n > row.n:
        notes.append(f"n is above the largest measured ({row.n:,}): check recall@10 in the index report")
    if kind.trains and not ivf_nlist(n):
        kind, search = KINDS["flat"], {}
        notes.append(f"too few vectors for {KINDS[row.kind].label} (16 lists × {IVF_MIN_POINTS_PER_LIST}); exact search")
    else:
        search = {k: min(v, ivf_nlist(n)) if k == "nprobe" else v for k, v in row.search.items()}
    why = (f"{kind.label} for {n:,} × {dim}-d: at {row.n:,} × {table_dim}-d, {KINDS[row.kind].label} kept "
           f"recall@10 {row.recall_at_10:.3f} of exact at {row.qps_batch1:,.0f} queries/s (batch 1, one core), "
           f"the most of the indexes reaching {RECALL_TARGET} (benchmarks/index/README.md)")
    if notes:
        why += "; " + "; ".join(notes)
    return Choice(kind.name, kind.factory(n, dim), search, dict(kind.build), kind.train_size(n), why)
