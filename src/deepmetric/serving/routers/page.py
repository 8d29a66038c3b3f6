"""For people: ``GET /`` (the search page, `static/`: plain HTML/CSS/JS shipped as package data), fed by
``GET /v1/thumbnails/{id}`` (the bundle's gallery thumbnails) and ``GET /v1/examples``; ``GET /docs`` (Swagger UI)
renders ``/openapi.json`` with assets served by the app itself (the fastapi-offline package), so nothing is
fetched from a CDN. (No ReDoc page: its bundle loads a logo from its vendor's CDN.) ``create_app`` mounts
:data:`STATIC_DIR` at ``/static`` and :func:`docs_assets` at ``/docs-assets``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from deepmetric.serving.dependencies import State
from deepmetric.serving.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
# The page loads only its own files (and blob: previews of the query): a CDN reference would be blocked.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

router = APIRouter()


@functools.cache
def docs_assets() -> Path | None:
    """Swagger UI files shipped by the fastapi-offline package (None when it is not installed)."""
    import importlib.util

    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@functools.cache
def _page() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


@router.get("/", include_in_schema=False)
async def index_page() -> Response:
    return HTMLResponse(_page(), headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})


@router.get("/docs", include_in_schema=False)
async def swagger() -> Response:
    if docs_assets() is None:
        raise ApiError(404, "not_found", "API docs need the fastapi-offline package (pip install fastapi-offline)")
    return get_swagger_ui_html(openapi_url="/openapi.json", title="deepmetric API",
                               swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs-assets/swagger-ui.css",
                               swagger_favicon_url="/static/favicon.svg",
                               swagger_ui_parameters={"validatorUrl": None})


@router.get("/v1/thumbnails/{item}", response_class=Response,
            responses={200: {"content": {"image/webp": {}, "image/jpeg": {}}, "description": "the thumbnail"}})
async def thumbnail(item: int, state: State) -> Response:
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


@router.get("/v1/examples")
async def examples(state: State, n: int = 8) -> dict[str, Any]:
    """A few gallery items from different classes (evenly spread), for the page's example queries."""
    if not 1 <= n <= 64:
        raise ApiError(422, "invalid_n", f"n must be in [1, 64], got {n}")
    bundle = state.current.bundle
    return {"thumbnails": bundle.thumbnails is not None, "examples": bundle.examples(n)}
