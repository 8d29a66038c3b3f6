"""The page at `/`, its static files, the thumbnails and examples endpoints, and the offline API docs, over a
real socket (the browser itself is driven in test_webui.py)."""

from __future__ import annotations

import io
import json
import re
import urllib.error
import urllib.request

from PIL import Image

from deepmetric.serving.routers.page import STATIC_DIR


def get(base: str, path: str):
    try:
        with urllib.request.urlopen(base + path, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_page_and_its_assets_are_served_by_the_app(page_server):
    base, *_ = page_server
    status, headers, body = get(base, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    html = body.decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(r.startswith(("/", "#")) for r in refs), refs  # nothing from another host
    for ref in (r for r in refs if r.startswith("/static/")):
        status, headers, data = get(base, ref)
        assert status == 200 and data == (STATIC_DIR / ref.removeprefix("/static/")).read_bytes(), ref
    for name in ("index.html", "app.js", "app.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://", text), f"{name} names an external URL"
    assert get(base, "/static/nope.js")[0] == 404


def test_thumbnails_and_examples(page_server):
    base, bundle, root, manifest = page_server
    status, headers, data = get(base, "/v1/thumbnails/5")
    assert status == 200 and headers["content-type"] == "image/webp" and "max-age" in headers["cache-control"]
    assert Image.open(io.BytesIO(data)).format == "WEBP"
    status, _, body = get(base, "/v1/thumbnails/36")
    assert status == 404 and json.loads(body)["error"] == "not_found"
    status, _, body = get(base, "/v1/thumbnails/abc")
    assert status == 422
    status, _, body = get(base, "/v1/examples?n=4")
    ex = json.loads(body)
    assert status == 200 and ex["thumbnails"] is True and len(ex["examples"]) == 4
    assert len({e["label"] for e in ex["examples"]}) == 4  # different classes
    ids = json.loads((bundle / "manifest.json").read_text())
    assert ids["thumbnails"]["count"] == 36
    assert json.loads(get(base, "/v1/examples?n=0")[2])["error"] == "invalid_n"


def test_without_thumbnails_the_api_says_so(page_server_without_thumbnails):
    base, *_ = page_server_without_thumbnails
    status, _, body = get(base, "/v1/thumbnails/0")
    assert status == 404 and json.loads(body)["error"] == "no_thumbnails" and "enabled: false" in json.loads(body)["message"]
    assert json.loads(get(base, "/v1/examples")[2])["thumbnails"] is False
    assert json.loads(get(base, "/v1/info")[2])["thumbnails"] is None


def test_openapi_and_offline_docs(page_server):
    base, *_ = page_server
    status, _, body = get(base, "/openapi.json")
    spec = json.loads(body)
    assert status == 200 and spec["openapi"].startswith("3.")
    search = spec["paths"]["/v1/search"]["post"]
    assert "image" in search["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert [p["name"] for p in search["parameters"]] == ["k", "fmr", "rerank"]
    assert {"/v1/info", "/v1/embed", "/v1/thumbnails/{item}", "/v1/examples", "/healthz"} <= set(spec["paths"])
    assert "/" not in spec["paths"] and "/docs" not in spec["paths"]
    assert get(base, "/redoc")[0] == 404  # ReDoc's bundle fetches a logo from its CDN: not offered
    for page, asset in (("/docs", "/docs-assets/swagger-ui-bundle.js"),):
        status, _, html = get(base, page)
        html = html.decode()
        assert status == 200 and asset in html
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith("/") for r in refs), (page, refs)  # no CDN
        for ref in refs:
            assert get(base, ref)[0] == 200, ref
