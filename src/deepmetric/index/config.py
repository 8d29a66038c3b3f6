"""Typed `index` parameters (`conf/base/parameters_index.yml`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SearchParams(BaseModel):
    """faiss search-time parameters (applied with `faiss.ParameterSpace`; stored in the bundle manifest)."""

    model_config = ConfigDict(extra="forbid")

    efSearch: int | None = Field(None, gt=0, description="HNSW: candidates explored per query")
    nprobe: int | None = Field(None, gt=0, description="IVF: inverted lists visited per query")

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class IndexParams(BaseModel):
    """`index:` — the faiss index of the gallery (test-split rows with role gallery/both)."""

    model_config = ConfigDict(extra="forbid")

    # `auto` (deepmetric.index.auto.choose_factory: by gallery size and dimension, from benchmarks/index) or a
    # faiss index_factory string, inner-product metric on L2-normalised embeddings:
    # Flat | HNSW32 | IVF64,Flat | IVF64,PQ16 | OPQ16,IVF64,PQ16 | …
    factory: str = "auto"
    search: SearchParams = Field(default_factory=SearchParams)
    # Build-time HNSW parameter (efConstruction), when the factory is an HNSW index.
    ef_construction: int | None = Field(None, gt=0)
    seed: int = 0
    batch_size: int = Field(64, gt=0, description="images per onnxruntime call while embedding the gallery")
    threads: int = Field(0, ge=0, description="onnxruntime intra-op threads (0: its default; with processes > 1, "
                                              "the cores shared out between the processes)")
    processes: int = Field(1, ge=0, description="processes embedding the gallery, each a contiguous shard of the "
                                                "manifest, concatenated in order (0: one per CPU core)")
    # Report: recall of the chosen index against exact (flat) search, on at most `eval_queries` query images.
    recall_ks: list[int] = Field(default_factory=lambda: [1, 10])
    eval_queries: int = Field(1000, gt=0)
    latency_queries: int = Field(200, gt=0, description="single-query searches timed for p50/p99")

    @field_validator("factory")
    @classmethod
    def _factory(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("empty faiss factory string")
        return v

    @field_validator("recall_ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"recall_ks must be positive integers, got {v}")
        return sorted(set(v))
