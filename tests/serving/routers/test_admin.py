"""``POST /v1/admin/reload`` on the real app (TestClient) over a copy of a bundle: a new version is verified and
swapped in, an unchanged one is left alone, a broken one is refused with 409 and the old one keeps serving. (Under
load and with several workers: tests/serving/test_reload.py; the token check: tests/serving/test_dependencies.py.)"""

from __future__ import annotations

import shutil

from deepmetric.bundle import load_bundle
from deepmetric.bundle.gallery import update_gallery

TOKEN = "s3cret-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_reload_swaps_in_a_new_version_and_refuses_a_broken_one(deploy_bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPMETRIC_SUPERVISED", raising=False)  # not a worker: no supervisor to signal
    folder, root, manifest = deploy_bundle
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    from fastapi.testclient import TestClient

    from deepmetric.serving.app import create_app

    with TestClient(create_app(load_bundle(copy), root=copy, admin_token=TOKEN)) as c:
        assert c.post("/v1/admin/reload", headers=AUTH).json()["status"] == "unchanged"
        update_gallery(copy, remove=[5])
        r = c.post("/v1/admin/reload", headers=AUTH)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "reloaded" and "workers" not in body
        assert (body["gallery_version"], body["gallery_size"], body["previous"]["gallery_size"]) == (1, 35, 36)
        assert c.get("/healthz").json()["reloads"] == 1
        image = (root / manifest["path"][5]).read_bytes()
        hits = c.post("/v1/search?k=3", files={"image": ("q.png", image)}).json()["results"][0]["neighbors"]
        assert 5 not in [h["id"] for h in hits]

        data = bytearray((copy / "index.faiss").read_bytes())
        data[len(data) // 2] ^= 0x01
        (copy / "index.faiss").write_bytes(bytes(data))
        r = c.post("/v1/admin/reload", headers=AUTH)
        assert r.status_code == 409 and r.json()["error"] == "bundle_refused"
        assert "index.faiss" in r.json()["message"] and '"gallery_version": 1' in r.json()["message"]
        assert c.get("/healthz").json()["gallery_size"] == 35
        assert c.post("/v1/search?k=3", files={"image": ("q.png", image)}).status_code == 200
