"""The HTTP service: FastAPI over a verified bundle (onnxruntime + faiss).

``GET /healthz``, ``GET /v1/info``, ``POST /v1/embed``, ``POST /v1/search?k=10``; images come as one or more
multipart files in the field ``image`` and go through the evaluation transform (`open_image` + `eval_image`),
the same code as evaluation and index building. Every refusal is a 4xx with ``{"error": code, "message": …}``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepmetric.data.images import ImageDecodeError, open_image
from deepmetric.data.transforms import eval_image
from deepmetric.serving.bundle import Bundle, load_bundle
from deepmetric.serving.config import ServerSettings

BUNDLE_ENV = "DEEPMETRIC_BUNDLE"
FIELD = "image"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes. A declared oversize body far above the limit
    is refused unread; a modest excess is drained first so the client reads a clean 413."""
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
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > 4 * limit:
            raise too_big
    if size > limit:
        raise too_big
    return b"".join(chunks)


def _classify(err: ImageDecodeError, name: str) -> ApiError:
    reason = err.reason
    low = reason.lower()
    if "decompression bomb" in low:
        return ApiError(413, "image_too_large", f"{name}: {reason}")
    if "truncated" in low:
        return ApiError(400, "truncated_image", f"{name}: {reason}")
    if "not an image" in low or "unrecognised format" in low or "empty file" in low:
        return ApiError(415, "not_an_image", f"{name}: {reason}")
    return ApiError(400, "corrupt_image", f"{name}: {reason}")


def create_app(bundle: Bundle, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    app = FastAPI(title="deepmetric", version=str(bundle.manifest.get("model_version")),
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.bundle = bundle
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # the service stays up
        return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _images(request: Request) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, "not_multipart",
                           f"send images as multipart/form-data in the field {FIELD!r} (got Content-Type {ctype!r})")
        body = await _read_body(request, settings.max_upload_bytes)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        form_request = Request(request.scope, receive=replay)
        try:
            form = await form_request.form(max_files=settings.max_images + 1, max_fields=100,
                                           max_part_size=settings.max_upload_bytes)
        except StarletteHTTPException as e:
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {e.detail}") from None
        try:
            entries = form.getlist(FIELD)
            if not entries:
                others = sorted(set(form.keys()))
                raise ApiError(400, "no_image", f"no file in the multipart field {FIELD!r}"
                               + (f" (fields sent: {others})" if others else ""))
            if len(entries) > settings.max_images:
                raise ApiError(413, "too_many_images",
                               f"{len(entries)} images in one request; the limit is {settings.max_images} "
                               "(setting max_images)")
            out = []
            for i, entry in enumerate(entries):
                if not isinstance(entry, UploadFile):
                    raise ApiError(400, "no_image", f"field {FIELD!r} #{i} is text, not a file upload")
                out.append((entry.filename or f"image[{i}]", await entry.read()))
            return out
        finally:
            await form.close()

    def _prepare(files: list[tuple[str, bytes]]) -> np.ndarray:
        arrays = []
        for name, data in files:
            try:
                img = open_image(data, settings.max_pixels, name=name)
            except ImageDecodeError as e:
                raise _classify(e, name) from None
            arrays.append(eval_image(img, bundle.spec))
        return np.stack(arrays)

    def _k(request: Request) -> int:
        raw = request.query_params.get("k")
        if raw is None:
            k = settings.default_k
        else:
            try:
                k = int(raw)
            except ValueError:
                raise ApiError(422, "invalid_k", f"k must be an integer, got {raw!r}") from None
        if not 1 <= k <= bundle.gallery_size:
            raise ApiError(422, "invalid_k", f"k must be in [1, {bundle.gallery_size}] (the gallery size), got {k}")
        return k

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": bundle.manifest.get("model_version"),
                "index_version": bundle.manifest.get("index_version"), "pid": os.getpid()}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return {**bundle.manifest, "limits": settings.model_dump()}

    @app.post("/v1/embed")
    async def embed(request: Request) -> dict[str, Any]:
        files = await _images(request)

        def work():
            return bundle.embed(_prepare(files))

        emb = await run_in_threadpool(work)
        return {
            "model_version": bundle.manifest.get("model_version"),
            "dim": bundle.dim,
            "embeddings": [{"image": name, "embedding": [float(v) for v in row]} for (name, _), row in zip(files, emb)],
        }

    @app.post("/v1/search")
    async def search(request: Request) -> dict[str, Any]:
        k = _k(request)
        files = await _images(request)

        def work():
            return bundle.search(bundle.embed(_prepare(files)), k)

        hits = await run_in_threadpool(work)
        return {
            "model_version": bundle.manifest.get("model_version"),
            "index_version": bundle.manifest.get("index_version"),
            "k": k,
            "results": [{"image": name, "neighbors": h} for (name, _), h in zip(files, hits)],
        }

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory deepmetric.serving.app:app_from_env``): one bundle load per worker, from
    the folder in $DEEPMETRIC_BUNDLE and the limits in DEEPMETRIC_* variables."""
    root = os.environ.get(BUNDLE_ENV)
    if not root:
        raise RuntimeError(f"set {BUNDLE_ENV} to the bundle folder")
    settings = ServerSettings.from_env()
    return create_app(load_bundle(root, threads=settings.threads), settings)
