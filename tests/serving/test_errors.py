"""Refusals: which status and code an unusable image gets (from the real decoder's errors), and the JSON error
shape every handler answers with (the handlers on a bare FastAPI app, through a TestClient)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from deepmetric.data.images import ImageDecodeError, open_image
from deepmetric.serving.errors import ApiError, add_exception_handlers, image_error
from tests.fixtures import png_bytes

GOOD = png_bytes(Image.new("RGB", (40, 30), (10, 200, 30)))


def decode_error(data: bytes) -> ImageDecodeError:
    """The decoder's own error for ``data`` (default limits: 40,000,000 pixels, 100:1)."""
    with pytest.raises(ImageDecodeError) as e:
        open_image(data, name="upload.png")
    return e.value


@pytest.mark.parametrize(("data", "status", "code", "words"), [
    (png_bytes(Image.new("L", (6400, 6400))), 413, "image_too_large", "decompression bomb"),
    (png_bytes(Image.new("L", (1, 500))), 413, "image_too_large", "too thin"),
    (GOOD[: len(GOOD) // 2], 400, "truncated_image", "truncated"),
    (b"plain text, not an image", 415, "not_an_image", "not an image"),
    (b"", 415, "not_an_image", "empty"),
    (GOOD[:60] + b"\xff" * 20 + GOOD[80:], 400, "corrupt_image", "corrupt image data"),
])
def test_image_errors_get_their_status_and_code(data, status, code, words):
    err = image_error(decode_error(data), "upload.png")
    assert (err.status, err.code) == (status, code), err.message
    assert err.message.startswith("upload.png: ") and words in err.message


def test_handlers_answer_with_the_json_error_shape():
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/refuse")
    async def refuse():
        raise ApiError(401, "unauthorized", "no", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/bug")
    async def bug():
        raise KeyError("oops")

    @app.get("/number/{n}")
    async def number(n: int):
        return {"n": n}

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/refuse")
        assert (r.status_code, r.json()) == (401, {"error": "unauthorized", "message": "no"})
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/nope").json()["error"] == "not_found"
        r = c.post("/refuse")
        assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
        r = c.get("/number/abc")
        assert (r.status_code, r.json()["error"]) == (422, "invalid_request") and "path.n:" in r.json()["message"]
        r = c.get("/bug")
        assert (r.status_code, r.json()) == (500, {"error": "internal_error", "message": "KeyError: 'oops'"})
