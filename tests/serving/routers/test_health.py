"""``GET /healthz`` and ``GET /v1/info`` on the real app (TestClient)."""

from __future__ import annotations

import json
import os

from deepmetric.serving.config import ServerSettings


def test_healthz_reports_the_served_version_and_batching(client, deploy_bundle, deploy_data):
    folder, root, manifest = deploy_bundle
    m = json.loads((folder / "manifest.json").read_text())
    c = client()
    h = c.get("/healthz").json()
    assert h == {"status": "ok", "model_version": m["model_version"], "index_version": m["index_version"],
                 "gallery_version": 0, "gallery_size": 36, "manifest_sha256": m["manifest_sha256"], "pid": os.getpid(),
                 "reloads": 0, "refused_reloads": 0, "last_reload": None, "batching": True,
                 "batches": {"count": 0, "images": 0, "mean_images": None}}
    image = (root / manifest["path"][0]).read_bytes()
    for n in (1, 2):
        assert c.post("/v1/search?k=1", files=[("image", (f"{i}.png", image)) for i in range(n)]).status_code == 200
    assert c.get("/healthz").json()["batches"] == {"count": 2, "images": 3, "mean_images": 1.5}
    h = client(ServerSettings(batching=False)).get("/healthz").json()
    assert h["batching"] is False and "batches" not in h


def test_info_is_the_manifest_and_the_limits(client, deploy_bundle):
    folder, _, _ = deploy_bundle
    settings = ServerSettings(max_images=5, max_pixels=123_456, max_aspect_ratio=7.5)
    info = client(settings).get("/v1/info").json()
    limits = info.pop("limits")
    # the session's default bundle has no match thresholds: /v1/info says so
    assert info.pop("match") == {"note": "no thresholds in this bundle: match omitted (rebuild the bundle with the "
                                         "evaluate stage's thresholds.json)"}
    assert info == json.loads((folder / "manifest.json").read_text())
    assert limits == settings.model_dump() and limits["max_pixels"] == 123_456 and limits["max_aspect_ratio"] == 7.5
