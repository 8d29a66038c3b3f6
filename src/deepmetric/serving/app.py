"""The HTTP service: FastAPI over a verified bundle (onnxruntime + faiss), assembled from its parts.

``GET /healthz``, ``GET /v1/info``, ``POST /v1/embed``, ``POST /v1/search?k=10``, ``POST /v1/admin/reload``, the
search page at ``/`` and the API docs at ``/docs``: the routes live in :mod:`deepmetric.serving.routers`, what they
are given in :mod:`deepmetric.serving.dependencies`. Every refusal is a 4xx with ``{"error": code, "message": …}``
(:mod:`deepmetric.serving.errors`).

Serving a bundle version: :class:`~deepmetric.serving.state.ServingState` holds it; each request keeps the
version it started with. ``POST /v1/admin/reload`` (``Authorization: Bearer <token>``, enabled by an admin token)
and the signals SIGHUP / SIGUSR1 reload the bundle folder: verified first, swapped in without dropping a request,
refused (the old version keeps serving) when it fails verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from deepmetric.bundle import Bundle, BundleError, load_bundle
from deepmetric.serving.config import (ADMIN_TOKEN_ENV, BUNDLE_ENV, BUNDLE_SOURCE_ENV, STORE_COLLECTION_ENV, STORE_ENV,
                                       ServerSettings)
from deepmetric.serving.errors import add_exception_handlers
from deepmetric.serving.routers import admin, health, page, search
from deepmetric.serving.routers.page import STATIC_DIR, docs_assets
from deepmetric.serving.state import ServingState
from deepmetric.store.milvus import DEFAULT_COLLECTION, GalleryStore

RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)

__all__ = ["RELOAD_SIGNALS", "STATIC_DIR", "app_from_env", "create_app"]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI):
    """Reload the bundle on SIGHUP / SIGUSR1 while the app runs (where signals can be handled: the main thread);
    release the served version and the decode pool at shutdown."""
    state: ServingState = app.state.serving
    loop = asyncio.get_running_loop()
    installed = {}  # signal -> the handler it had before (restored on shutdown, e.g. nohup's SIG_IGN)

    def on_signal() -> None:
        async def go() -> None:
            with contextlib.suppress(BundleError):  # refused: logged, in /healthz's last_reload; the old one serves
                await state.reload_async()
        loop.create_task(go())

    for sig in RELOAD_SIGNALS:
        try:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, on_signal)
            installed[sig] = previous
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (e.g. a test client)
            pass
    try:
        yield
    finally:
        for sig, previous in installed.items():
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
        state.close()


def create_app(bundle: Bundle, settings: ServerSettings | None = None, *, root: str | os.PathLike[str] | None = None,
               admin_token: str | None = None, store: GalleryStore | None = None) -> FastAPI:
    """The app over ``bundle`` (loaded from ``root``, the folder reloads read; default ``bundle.root``).
    ``admin_token``: enables ``POST /v1/admin/reload`` for requests carrying it as a Bearer token. ``store``: a
    gallery store already checked against ``bundle`` (:meth:`GalleryStore.check`), searched instead of the
    bundle's index."""
    settings = settings or ServerSettings()
    app = FastAPI(title="deepmetric", version=str(bundle.manifest.get("model_version")),
                  description="Image retrieval over a deepmetric deploy bundle: embed images with the bundle's ONNX "
                              "model, search its faiss gallery. The search page is at `/`.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=_lifespan)
    app.state.serving = ServingState(root if root is not None else bundle.root, settings, bundle, store)
    app.state.settings = settings
    app.state.admin_token = admin_token
    add_exception_handlers(app)
    app.include_router(health.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    assets = docs_assets()
    if assets is not None:
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    app.include_router(page.router)
    app.include_router(search.router)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``--factory deepmetric.serving.app:app_from_env``): one bundle load per worker, from
    the folder in $DEEPMETRIC_BUNDLE and the limits in DEEPMETRIC_* variables; reloads read
    $DEEPMETRIC_BUNDLE_SOURCE (the --bundle path as given, e.g. a releases/current symlink). With
    $DEEPMETRIC_STORE (and $DEEPMETRIC_STORE_COLLECTION) the gallery is searched in that Milvus collection."""
    root = os.environ.get(BUNDLE_ENV)
    if not root:
        raise RuntimeError(f"set {BUNDLE_ENV} to the bundle folder")
    settings = ServerSettings.from_env()
    bundle = load_bundle(root, threads=settings.threads)
    store = None
    if os.environ.get(STORE_ENV):
        store = GalleryStore(os.environ[STORE_ENV], os.environ.get(STORE_COLLECTION_ENV) or DEFAULT_COLLECTION)
        store.check(bundle.manifest)
    return create_app(bundle, settings, root=os.environ.get(BUNDLE_SOURCE_ENV, root),
                      admin_token=os.environ.get(ADMIN_TOKEN_ENV) or None, store=store)
