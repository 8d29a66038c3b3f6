"""``GET /healthz`` (this process: the bundle version it serves, its reloads — how many, how many refused, the last
one with its outcome and time, a refusal with its reason —, batching figures) and ``GET /v1/info`` (the bundle's
manifest, its match operating points — or why there are none — and the server's limits)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter

from deepmetric.bundle.thresholds import NO_THRESHOLDS
from deepmetric.serving.dependencies import Settings, State
from deepmetric.serving.state import bundle_summary

router = APIRouter()


@router.get("/healthz")
async def healthz(state: State) -> dict[str, Any]:
    served = state.current
    out = {"status": "ok", **bundle_summary(served.bundle), "pid": os.getpid(), "reloads": state.reloads,
           "refused_reloads": state.refused_reloads, "last_reload": state.last_reload,
           "batching": served.batcher is not None}
    if served.store is not None:  # the gallery searched (not called here: /healthz answers while the store is away)
        out["store"] = {"uri": served.store.uri, "collection": served.store.collection}
    if served.batcher is not None:  # of this worker, since this bundle version was loaded
        b = served.batcher
        out["batches"] = {"count": b.batches, "images": b.images,
                          "mean_images": round(b.images / b.batches, 2) if b.batches else None}
    return out


@router.get("/v1/info")
async def info(state: State, settings: Settings) -> dict[str, Any]:
    bundle = state.current.bundle
    match = bundle.thresholds.describe() if bundle.thresholds is not None else {"note": NO_THRESHOLDS}
    return {**bundle.manifest, "match": match, "limits": settings.model_dump()}
