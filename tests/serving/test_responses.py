"""The two response shapes: compact JSON, and the error object."""

from __future__ import annotations

import json

from deepmetric.serving.responses import error_response, json_response


def test_json_response_is_compact_json():
    r = json_response({"k": 2, "results": [{"image": "é.png", "score": 0.5}]})
    assert r.media_type == "application/json" and r.status_code == 200
    assert r.body == b'{"k":2,"results":[{"image":"\\u00e9.png","score":0.5}]}'


def test_error_response_shape_status_and_headers():
    r = error_response(409, "bundle_refused", "still serving", headers={"X-Why": "test"})
    assert r.status_code == 409 and r.headers["x-why"] == "test"
    assert json.loads(r.body) == {"error": "bundle_refused", "message": "still serving"}
