"""``POST /v1/search`` and ``POST /v1/embed`` on the real app (TestClient): the answers match the bundle's own
search, with and without dynamic batching; the order of the checks (k before the body, the body before decoding).
Every refusal over a real socket: tests/serving/test_server.py."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import load_eval_image
from deepmetric.serving.config import ServerSettings
from deepmetric.serving.routers.search import prepare_images


@pytest.mark.parametrize("batching", [True, False])
def test_search_and_embed_give_the_bundles_own_answers(client, loaded, deploy_bundle, batching):
    _, root, manifest = deploy_bundle
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    images = [(root / test["path"][i]).read_bytes() for i in (0, 9)]
    c = client(ServerSettings(batching=batching))
    r = c.post("/v1/search?k=4", files=[("image", ("a.png", images[0])), ("image", ("b.png", images[1]))])
    assert r.status_code == 200, r.text
    body = r.json()
    expected = loaded.search(loaded.embed(np.stack([load_eval_image(b, loaded.spec) for b in images])), 4)
    assert body["k"] == 4 and [x["image"] for x in body["results"]] == ["a.png", "b.png"]
    for got, want in zip(body["results"], expected):
        assert [h["id"] for h in got["neighbors"]] == [h["id"] for h in want]
        np.testing.assert_allclose([h["score"] for h in got["neighbors"]], [h["score"] for h in want], atol=1e-5)
    assert body["results"][0]["neighbors"][0]["path"] == test["path"][0]
    r = c.post("/v1/embed", files={"image": ("a.png", images[0])})
    emb = np.array(r.json()["embeddings"][0]["embedding"], dtype=np.float32)
    assert r.json()["dim"] == 16 and r.json()["model_version"] == loaded.manifest["model_version"]
    np.testing.assert_allclose(emb, loaded.embed(load_eval_image(images[0], loaded.spec)[None])[0], atol=1e-5)


def test_k_is_checked_before_the_body_is_read(client):
    c = client()
    r = c.post("/v1/search?k=0", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_k"
    r = c.post("/v1/search?k=2", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and r.json()["error"] == "not_multipart"


def test_the_settings_limits_reach_the_decode(client, deploy_bundle):
    """The images (40×36) pass the default limits; the app's settings are what it checks them against."""
    _, root, manifest = deploy_bundle
    image = (root / manifest["path"][0]).read_bytes()
    assert client().post("/v1/embed", files={"image": ("a.png", image)}).status_code == 200
    for settings, words in ((ServerSettings(max_aspect_ratio=1.05), "(parameter max_aspect_ratio)"),
                            (ServerSettings(max_pixels=1_000), "(parameter max_pixels)")):
        r = client(settings).post("/v1/embed", files={"image": ("a.png", image)})
        assert r.status_code == 413 and r.json()["error"] == "image_too_large" and words in r.json()["message"]


def test_prepare_images_names_the_first_bad_file(loaded, deploy_bundle):
    from deepmetric.serving.errors import ApiError

    _, root, manifest = deploy_bundle
    good = (root / manifest["path"][0]).read_bytes()
    batch = prepare_images([("a.png", good), ("b.png", good)], loaded.spec, ImageLimits())
    assert batch.dtype == np.uint8 and batch.shape == (2, 32, 32, 3)
    with pytest.raises(ApiError) as e:
        prepare_images([("a.png", good), ("bad.txt", b"text"), ("c.png", b"")], loaded.spec, ImageLimits())
    assert (e.value.status, e.value.code) == (415, "not_an_image") and e.value.message.startswith("bad.txt: ")
