"""``create_app`` assembles the parts: the routes of every router, the static mounts, the exception handlers, and
a lifespan that reloads the bundle on SIGHUP / SIGUSR1 and releases the served version at shutdown."""

from __future__ import annotations

import asyncio
import os
import signal

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount

from deepmetric.serving.app import RELOAD_SIGNALS, create_app
from deepmetric.serving.errors import ApiError


def test_the_app_is_its_routers_mounts_and_handlers(loaded):
    from fastapi.testclient import TestClient

    app = create_app(loaded)
    routes = {(path, method.upper()) for path, ops in app.openapi()["paths"].items() for method in ops}
    assert routes == {("/healthz", "GET"), ("/v1/info", "GET"), ("/v1/admin/reload", "POST"), ("/v1/examples", "GET"),
                      ("/v1/thumbnails/{item}", "GET"), ("/v1/embed", "POST"), ("/v1/search", "POST")}
    assert {r.path for r in app.routes if isinstance(r, Mount)} == {"/static", "/docs-assets"}
    assert {ApiError, StarletteHTTPException, RequestValidationError, Exception} <= set(app.exception_handlers)
    assert app.state.serving.root == loaded.root and app.state.admin_token is None
    assert app.version == loaded.manifest["model_version"]
    with TestClient(app) as c:  # the routes outside the schema and the mounts answer
        for path in ("/", "/docs", "/static/app.js", "/docs-assets/swagger-ui.css"):
            assert c.get(path).status_code == 200, path


def test_lifespan_reloads_on_the_signals_and_closes(loaded):
    """In the main thread (as uvicorn runs it) the lifespan installs the reload signals; the folder is unchanged,
    so each signal is a verified reload that reports "unchanged"."""
    app = create_app(loaded)
    state = app.state.serving
    assert RELOAD_SIGNALS == (signal.SIGHUP, signal.SIGUSR1)

    async def run() -> list:
        seen = []
        async with app.router.lifespan_context(app):
            for sig in RELOAD_SIGNALS:
                state.last_reload = None
                os.kill(os.getpid(), sig)
                for _ in range(600):
                    await asyncio.sleep(0.05)
                    if state.last_reload is not None:
                        break
                seen.append(state.last_reload["status"] if state.last_reload else None)
        return seen

    before = {sig: signal.getsignal(sig) for sig in RELOAD_SIGNALS}
    assert asyncio.run(run()) == ["unchanged", "unchanged"]
    assert {sig: signal.getsignal(sig) for sig in RELOAD_SIGNALS} == before, "the handlers are removed"
    assert state.prep_pool._shutdown and state.current.batcher._closing, "the served version is released"


def test_lifespan_restores_the_signal_handlers_it_found(loaded):
    """A server started under ``nohup`` finds SIGHUP ignored; at shutdown that disposition comes back (not SIG_DFL,
    which would let a later hang-up kill the process that embedded the app)."""
    app = create_app(loaded)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            await asyncio.sleep(0)

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        asyncio.run(run())
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
