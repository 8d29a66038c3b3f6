"""The HTTP service: FastAPI over a verified bundle (onnxruntime + faiss).

``GET /healthz``, ``GET /v1/info``, ``POST /v1/embed``, ``POST /v1/search?k=10``; images come as one or more
multipart files in the field ``image`` and go through the evaluation transform (`open_image` + `eval_image`),
the same code as evaluation and index building. Every refusal is a 4xx with ``{"error": code, "message": …}``.

Serving a bundle version: :class:`~deepmetric.serving.state.ServingState` holds it; each request keeps the
version it started with. With batching on (the default), concurrent requests' images run through onnxruntime and
faiss as one batch (:mod:`deepmetric.serving.batching`). ``POST /v1/admin/reload`` (``Authorization: Bearer
<token>``, enabled by an admin token) and the signals SIGHUP / SIGUSR1 reload the bundle folder: verified first,
swapped in without dropping a request, refused (the old version keeps serving) when it fails verification.

For people: ``GET /`` is the search page (`static/`: plain HTML/CSS/JS, package data), fed by
``GET /v1/thumbnails/{id}`` (the bundle's gallery thumbnails) and ``GET /v1/examples``; ``/docs`` (Swagger UI)
renders ``/openapi.json`` with assets served by the app itself (the fastapi-offline package), so nothing is
fetched from a CDN. (No ReDoc page: its bundle loads a logo from its vendor's CDN.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepmetric.data.images import ImageDecodeError, ImageTooLargeError
from deepmetric.data.transforms import load_eval_image
from deepmetric.bundle import Bundle, BundleError, load_bundle
from deepmetric.serving.config import ADMIN_TOKEN_ENV, BUNDLE_ENV, BUNDLE_SOURCE_ENV, SUPERVISED_ENV, ServerSettings
from deepmetric.serving.state import Served, ServingState, bundle_summary

RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
FIELD = "image"
STATIC_DIR = Path(__file__).with_name("static")
# The page loads only its own files (and blob: previews of the query): a CDN reference would be blocked.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
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


def _docs_assets() -> Path | None:
    """Swagger UI files shipped by the fastapi-offline package (None when it is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _json(content: Any) -> Response:
    """A JSON response without FastAPI's jsonable_encoder pass (the payloads here are plain JSON types)."""
    return Response(json.dumps(content, separators=(",", ":")).encode(), media_type="application/json")


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


def _check_multipart_framing(ctype: str, body: bytes) -> None:
    """A boundary in the Content-Type and a close delimiter (``--BOUNDARY--``) in the body. The multipart
    parser accepts a body cut short and returns the parts it completed (often none), which would otherwise
    read as "no image"."""
    from multipart.multipart import parse_options_header

    _, options = parse_options_header(ctype)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "malformed multipart body: the Content-Type has no boundary parameter")
    if b"--" + boundary + b"--" not in body:
        raise ApiError(400, "bad_multipart",
                       f"malformed multipart body: not terminated (no closing delimiter --{boundary.decode('latin-1')}--;"
                       f" {len(body):,} bytes received)")


def _classify(err: ImageDecodeError, name: str) -> ApiError:
    reason = err.reason
    low = reason.lower()
    if isinstance(err, ImageTooLargeError) or "decompression bomb" in low:
        return ApiError(413, "image_too_large", f"{name}: {reason}")
    if "truncated" in low:
        return ApiError(400, "truncated_image", f"{name}: {reason}")
    if "not an image" in low or "unrecognised format" in low or "empty file" in low:
        return ApiError(415, "not_an_image", f"{name}: {reason}")
    return ApiError(400, "corrupt_image", f"{name}: {reason}")


def create_app(bundle: Bundle, settings: ServerSettings | None = None, *, root: str | os.PathLike[str] | None = None,
               admin_token: str | None = None) -> FastAPI:
    """The app over ``bundle`` (loaded from ``root``, the folder reloads read; default ``bundle.root``).
    ``admin_token``: enables ``POST /v1/admin/reload`` for requests carrying it as a Bearer token."""
    settings = settings or ServerSettings()
    state = ServingState(root if root is not None else bundle.root, settings, bundle)

    async def reload_now() -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(None, state.reload)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        installed = []

        def on_signal() -> None:
            async def go() -> None:
                with contextlib.suppress(BundleError):  # refused: logged in state.last_reload, old one serves
                    await reload_now()
            loop.create_task(go())

        for sig in RELOAD_SIGNALS:
            try:
                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (e.g. a test client)
                pass
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            state.close()

    app = FastAPI(title="deepmetric", version=str(bundle.manifest.get("model_version")),
                  description="Image retrieval over a deepmetric deploy bundle: embed images with the bundle's ONNX "
                              "model, search its faiss gallery. The search page is at `/`.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.serving = state
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
        _check_multipart_framing(ctype, body)
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

    def _prepare(bundle: Bundle, files: list[tuple[str, bytes]]) -> np.ndarray:
        arrays = []
        for name, data in files:
            try:
                arrays.append(load_eval_image(data, bundle.spec, settings.max_pixels, settings.max_aspect_ratio,
                                              name=name))
            except ImageDecodeError as e:
                raise _classify(e, name) from None
        return np.stack(arrays)

    async def _run(served: Served, files: list[tuple[str, bytes]], k: int):
        """(embeddings, scores, rows) of the request's images: through the batcher, or (batching off) in the
        thread pool, one onnxruntime call per request."""
        if served.batcher is None:
            return await run_in_threadpool(lambda: served.run(_prepare(served.bundle, files), k))
        loop = asyncio.get_running_loop()
        served.batcher.announce()
        try:
            images = await loop.run_in_executor(state.prep_pool, _prepare, served.bundle, files)
        except BaseException:
            served.batcher.withdraw()
            raise
        result = await asyncio.wrap_future(served.batcher.submit(images, k))
        return result.embeddings, result.scores, result.rows

    def _k(request: Request, bundle: Bundle) -> int:
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
        served = state.current
        out = {"status": "ok", **bundle_summary(served.bundle), "pid": os.getpid(), "reloads": state.reloads,
               "batching": served.batcher is not None}
        if served.batcher is not None:  # of this worker, since this bundle version was loaded
            b = served.batcher
            out["batches"] = {"count": b.batches, "images": b.images,
                              "mean_images": round(b.images / b.batches, 2) if b.batches else None}
        return out

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        return {**state.current.bundle.manifest, "limits": settings.model_dump()}

    @app.post("/v1/admin/reload")
    async def admin_reload(request: Request) -> Response:
        """Reload the bundle folder (verified first; refused → 409 and the current version keeps serving).
        Needs ``Authorization: Bearer <admin token>``. With several workers, every worker reloads."""
        if not admin_token:
            raise ApiError(403, "admin_disabled", "admin calls are disabled: start the server with "
                           "--admin-token-file (or DEEPMETRIC_ADMIN_TOKEN) to enable them")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), admin_token.encode()):
            return _error(401, "unauthorized", "missing or wrong admin token (Authorization: Bearer <token>)",
                          headers={"WWW-Authenticate": "Bearer"})
        try:
            result = await reload_now()
        except BundleError as e:
            return _error(409, "bundle_refused", f"{e}; still serving "
                          + json.dumps(bundle_summary(state.current.bundle), sort_keys=True))
        if os.environ.get(SUPERVISED_ENV) and result["status"] == "reloaded":
            os.kill(os.getppid(), signal.SIGHUP)  # the supervisor has every other worker reload as well
            result["workers"] = "all (signalled the supervisor)"
        return _json(result)

    page = (STATIC_DIR / "index.html").read_bytes()
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    assets = _docs_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def index_page() -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> Response:
        if assets is None:
            raise ApiError(404, "not_found", "API docs need the fastapi-offline package (pip install fastapi-offline)")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="deepmetric API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg",
                                   swagger_ui_parameters={"validatorUrl": None})

    @app.get("/v1/thumbnails/{item}", response_class=Response,
             responses={200: {"content": {"image/webp": {}, "image/jpeg": {}}, "description": "the thumbnail"}})
    async def thumbnail(item: int) -> Response:
        """The gallery thumbnail of one id (from the bundle; 404 when the bundle has none)."""
        bundle = state.current.bundle
        if bundle.thumbnails is None:
            raise ApiError(404, "no_thumbnails", "this bundle was built without thumbnails "
                           "(bundle.thumbnails.enabled: false)")
        row = bundle.row_of(item)
        data = None if row is None else bundle.thumbnails.get(row)
        if data is None:
            raise ApiError(404, "not_found", f"no thumbnail for id {item} (no gallery item has that id)")
        return Response(data, media_type=bundle.thumbnails.media_type,
                        headers={"Cache-Control": "public, max-age=86400",
                                 "ETag": f'"{bundle.manifest.get("index_version")}-{item}"'})

    @app.get("/v1/examples")
    async def examples(n: int = 8) -> dict[str, Any]:
        """A few gallery items from different classes (evenly spread), for the page's example queries."""
        if not 1 <= n <= 64:
            raise ApiError(422, "invalid_n", f"n must be in [1, 64], got {n}")
        bundle = state.current.bundle
        return {"thumbnails": bundle.thumbnails is not None, "examples": bundle.examples(n)}

    @app.post("/v1/embed", openapi_extra=_IMAGES_BODY)
    async def embed(request: Request) -> Response:
        files = await _images(request)
        with state.use() as served:
            emb, _, _ = await _run(served, files, 0)
            bundle = served.bundle
        return _json({
            "model_version": bundle.manifest.get("model_version"),
            "dim": bundle.dim,
            "embeddings": [{"image": name, "embedding": row.tolist()} for (name, _), row in zip(files, emb)],
        })

    @app.post("/v1/search", openapi_extra={**_IMAGES_BODY, "parameters": [_K_PARAM]})
    async def search(request: Request) -> Response:
        with state.use() as served:
            bundle = served.bundle
            k = _k(request, bundle)
            files = await _images(request)
            _, scores, rows = await _run(served, files, k)
        return _json({
            "model_version": bundle.manifest.get("model_version"),
            "index_version": bundle.manifest.get("index_version"),
            "k": k,
            "results": [{"image": name, "neighbors": h} for (name, _), h in zip(files, bundle.neighbours(scores, rows))],
        })

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory deepmetric.serving.app:app_from_env``): one bundle load per worker, from
    the folder in $DEEPMETRIC_BUNDLE and the limits in DEEPMETRIC_* variables; reloads read
    $DEEPMETRIC_BUNDLE_SOURCE (the --bundle path as given, e.g. a releases/current symlink)."""
    root = os.environ.get(BUNDLE_ENV)
    if not root:
        raise RuntimeError(f"set {BUNDLE_ENV} to the bundle folder")
    settings = ServerSettings.from_env()
    return create_app(load_bundle(root, threads=settings.threads), settings,
                      root=os.environ.get(BUNDLE_SOURCE_ENV, root), admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None)
