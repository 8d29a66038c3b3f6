"""``POST /v1/search?k=10&fmr=0.01&rerank=qe`` and ``POST /v1/embed``: images come as one or more multipart files in the field
``image`` and go through the evaluation transform (`open_image` + `eval_image`), the same code as evaluation and
index building, then the bundle's model (and index). A search of a bundle with match thresholds marks each neighbour ``match`` at
the operating point ``fmr`` (default: the bundle's) and names that point in the answer; ``rerank=qe`` orders the
neighbours by α-query expansion (:meth:`~deepmetric.bundle.Bundle.ranked`).

A request keeps the bundle version it started with (:meth:`ServingState.use`). With batching on (the default),
concurrent requests' images run through onnxruntime and faiss as one batch (:mod:`deepmetric.serving.batching`);
off, each request is one onnxruntime call in the thread pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from deepmetric.bundle import Bundle
from deepmetric.bundle.reader import RERANKINGS
from deepmetric.data.images import ImageDecodeError, ImageLimits
from deepmetric.data.transforms import load_eval_image
from deepmetric.serving.config import ServerSettings
from deepmetric.serving.dependencies import Settings, State
from deepmetric.serving.errors import ApiError, image_error
from deepmetric.serving.multipart import FIELD, parse_images, require_multipart
from deepmetric.serving.responses import json_response
from deepmetric.serving.state import Served, ServingState
from deepmetric.store.milvus import StoreError

router = APIRouter()

_IMAGES_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": [FIELD],
            "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                                   "description": "one or more image files (JPEG, PNG, WebP, …)"}},
        }}},
    },
    "responses": {"4XX": {"description": "refused: `{\"error\": code, \"message\": text}`"}},
}
_K_PARAM = {"name": "k", "in": "query", "required": False, "description": "neighbours per image (1 … gallery size)",
            "schema": {"type": "integer", "minimum": 1, "default": 10}}
_FMR_PARAM = {"name": "fmr", "in": "query", "required": False,
              "description": "the operating point (target false-match rate) that decides each neighbour's `match`: "
                             "one of the bundle's (`/v1/info` lists them; default: the bundle's default_fmr)",
              "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}
_RERANK_PARAM = {"name": "rerank", "in": "query", "required": False,
                 "description": "`qe`: order the neighbours by α-query expansion (n = 2, α = 3); each gains `qe_score`, "
                                "`score` stays the query's cosine (what `match` is decided on). Default: none",
                 "schema": {"type": "string", "enum": list(RERANKINGS)}}


async def read_body(request: Request, limit: int, timeout_s: float | None = None) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes. A declared oversize body far above the limit
    is refused unread; a modest excess is drained first so the client reads a clean 413. ``timeout_s``: the
    longest wait for the body's next bytes; a client that sends nothing for that long (e.g. one that declared more
    bytes than it sends) gets a 408 and the connection is closed. A client that disconnects mid-body ends the
    request with :class:`~starlette.requests.ClientDisconnect` saying how much had arrived (logged as one line)."""
    declared = request.headers.get("content-length")
    too_big = ApiError(413, "upload_too_large",
                       f"request body exceeds the upload limit of {limit:,} bytes (setting max_upload_bytes)")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, "bad_request", f"invalid Content-Length {declared!r}") from None
        if n > 4 * limit:
            raise too_big
    of = f" of {int(declared):,}" if declared is not None else ""
    chunks, size = [], 0
    stream = request.stream()
    while True:
        try:
            async with asyncio.timeout(timeout_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise ApiError(408, "body_timeout", f"no request body bytes arrived for {timeout_s:g} s ({size:,}{of} "
                           "bytes received; setting body_timeout_s)", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise ClientDisconnect(f"after {size:,}{of} body bytes") from None
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 4 * limit:
            raise too_big
    if size > limit:
        raise too_big
    return b"".join(chunks)


async def request_images(request: Request, settings: ServerSettings) -> list[tuple[str, bytes]]:
    """The uploaded images of ``request`` as ``(file name, bytes)`` (refusals: :mod:`deepmetric.serving.multipart`)."""
    ctype = request.headers.get("content-type", "")
    require_multipart(ctype)
    body = await read_body(request, settings.max_upload_bytes, settings.body_timeout_s)
    return await parse_images(body, ctype, max_images=settings.max_images, max_part_size=settings.max_upload_bytes)


def prepare_images(files: list[tuple[str, bytes]], spec: Any, limits: ImageLimits) -> np.ndarray:
    """The model's input batch (uint8 NHWC) of the uploaded files; the first unusable one refuses the request."""
    arrays = []
    for name, data in files:
        try:
            arrays.append(load_eval_image(data, spec, limits=limits, name=name))
        except ImageDecodeError as e:
            raise image_error(e, name) from None
    return np.stack(arrays)


async def _run(state: ServingState, served: Served, files: list[tuple[str, bytes]], k: int, limits: ImageLimits):
    """(embeddings, scores, rows) of the request's images: through the batcher, or (batching off) in the
    thread pool, one onnxruntime call per request."""
    if served.batcher is None:
        return await run_in_threadpool(lambda: served.run(prepare_images(files, served.bundle.spec, limits), k))
    loop = asyncio.get_running_loop()
    served.batcher.announce()
    try:
        images = await loop.run_in_executor(state.prep_pool, prepare_images, files, served.bundle.spec, limits)
    except BaseException:
        served.batcher.withdraw()
        raise
    result = await asyncio.wrap_future(served.batcher.submit(images, k))
    return result.embeddings, result.scores, result.rows


async def _store_call(fn, *args):
    """A gallery-store call in the thread pool; the store unreachable → 503 with the reason (the next request
    tries again: the client reconnects when the store is back)."""
    try:
        return await run_in_threadpool(fn, *args)
    except StoreError as e:
        raise ApiError(503, "store_unavailable", str(e), headers={"Retry-After": "1"}) from None


async def _k(request: Request, served: Served, settings: ServerSettings) -> int:
    raw = request.query_params.get("k")
    if raw is None:
        k = settings.default_k
    else:
        try:
            k = int(raw)
        except ValueError:
            raise ApiError(422, "invalid_k", f"k must be an integer, got {raw!r}") from None
    size = served.gallery_size() if served.store is None else await _store_call(served.gallery_size)
    if not 1 <= k <= size:
        raise ApiError(422, "invalid_k", f"k must be in [1, {size}] (the gallery size), got {k}")
    return k


def _operating_point(request: Request, bundle: Bundle) -> dict[str, float] | None:
    """The operating point of ``?fmr=`` (absent: the bundle's default; None for a bundle without thresholds)."""
    raw = request.query_params.get("fmr")
    fmr = None
    if raw is not None:
        try:
            fmr = float(raw)
        except ValueError:
            raise ApiError(422, "invalid_fmr", f"fmr must be a number in (0, 1), got {raw!r}") from None
    try:
        return bundle.operating_point(fmr)
    except ValueError as e:
        raise ApiError(422, "invalid_fmr", str(e)) from None


def _rerank(request: Request) -> str | None:
    raw = request.query_params.get("rerank")
    if raw is None or raw == "none":
        return None
    if raw not in RERANKINGS:
        raise ApiError(422, "invalid_rerank", f"rerank must be one of {['none', *RERANKINGS]}, got {raw!r}")
    return raw


@router.post("/v1/embed", openapi_extra=_IMAGES_BODY)
async def embed(request: Request, state: State, settings: Settings) -> Response:
    files = await request_images(request, settings)
    with state.use() as served:
        emb, _, _ = await _run(state, served, files, 0, settings.limits)
        bundle = served.bundle
    return json_response({
        "model_version": bundle.manifest.get("model_version"),
        "dim": bundle.dim,
        "embeddings": [{"image": name, "embedding": row.tolist()} for (name, _), row in zip(files, emb)],
    })


@router.post("/v1/search", openapi_extra={**_IMAGES_BODY, "parameters": [_K_PARAM, _FMR_PARAM, _RERANK_PARAM]})
async def search(request: Request, state: State, settings: Settings) -> Response:
    with state.use() as served:
        bundle = served.bundle
        k = await _k(request, served, settings)
        point = _operating_point(request, bundle)
        rerank = _rerank(request)
        if rerank is not None and not served.searches_index:
            raise ApiError(422, "invalid_rerank", "rerank needs the bundle's own index; this server searches a "
                           "gallery store (serve --store)")
        files = await request_images(request, settings)
        if not served.searches_index:  # the gallery searcher is a store: embed in the batch, then ask the store
            emb, _, _ = await _run(state, served, files, 0, settings.limits)
            hits = await _store_call(served.store.search, emb, k)
        else:
            emb, scores, rows = await _run(state, served, files, bundle.first_k(k, rerank), settings.limits)
            if rerank is None:
                hits = bundle.ranked(emb, scores, rows, k)
            else:  # a second search per query: in the thread pool, off the event loop
                hits = await run_in_threadpool(bundle.ranked, emb, scores, rows, k, rerank)
    payload = bundle.search_payload([name for name, _ in files], hits, k, point)
    return json_response({**payload, "rerank": rerank} if rerank else payload)
