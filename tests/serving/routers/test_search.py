"""``POST /v1/search`` and ``POST /v1/embed`` on the real app (TestClient): the answers match the bundle's own
search, with and without dynamic batching; the order of the checks (k before the body, the body before decoding).
Every refusal over a real socket: tests/serving/test_server.py."""

from __future__ import annotations

import json

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


def _train_image(manifest) -> str:
    """A train-class image: not in the gallery, so its neighbours are other items (tests/deploy_fixtures.py:
    some at or above the default threshold, none at the strict one)."""
    return manifest[manifest["split"] == "train"]["path"].iloc[1]


def test_search_marks_matches_at_the_chosen_operating_point(thresholds_server):
    """Over a real socket: each neighbour's `match` is `score >= threshold` of the operating point ?fmr= picks
    (default: the bundle's), which the answer names; /v1/info lists the points."""
    from tests.deploy_fixtures import FIXTURE_THRESHOLDS
    from tests.server_fixtures import post_images, request

    base, folder, root, manifest = thresholds_server
    query = (root / _train_image(manifest)).read_bytes()
    gallery_item = (root / manifest[manifest["split"] == "test"]["path"].iloc[4]).read_bytes()
    files = [("image", "q.png", query), ("image", "g.png", gallery_item)]
    status, body = post_images(base, "/v1/search?k=10", files)
    assert status == 200, body
    assert body["operating_point"] == {"fmr": 0.01, "threshold": 0.97}
    for result in body["results"]:
        assert [h["match"] for h in result["neighbors"]] == [h["score"] >= 0.97 for h in result["neighbors"]]
    flags = [h["match"] for h in body["results"][0]["neighbors"]]
    assert any(flags) and not all(flags), flags  # the fixture's scores straddle the default threshold
    assert body["results"][1]["neighbors"][0]["match"] is True  # a gallery image finds itself
    status, strict = post_images(base, "/v1/search?k=10&fmr=0.001", files)
    assert status == 200 and strict["operating_point"] == {"fmr": 0.001, "threshold": 0.99}
    assert not any(h["match"] for h in strict["results"][0]["neighbors"])  # no match in the gallery
    assert strict["results"][1]["neighbors"][0]["match"] is True
    assert [h["id"] for h in strict["results"][0]["neighbors"]] == [h["id"] for h in body["results"][0]["neighbors"]]
    status, info = request(base, "GET", "/v1/info")
    assert status == 200 and info["match"] == {
        "score": "cosine", "calibrated_on": "val", "default_fmr": 0.01,
        "operating_points": FIXTURE_THRESHOLDS["operating_points"]}
    assert info["thresholds"] == {"file": "thresholds.json"}


@pytest.mark.parametrize("fmr, message", [
    ("0.05", "fmr 0.05 is not an operating point of this bundle; available: 0.01, 0.001"),
    ("0", "fmr must be in (0, 1), got 0.0"),
    ("1", "fmr must be in (0, 1), got 1.0"),
    ("-0.01", "fmr must be in (0, 1), got -0.01"),
    ("nan", "fmr must be in (0, 1), got nan"),
    ("inf", "fmr must be in (0, 1), got inf"),
    ("1%", "fmr must be a number in (0, 1), got '1%'"),
])
def test_a_bad_fmr_is_refused_before_the_body_is_read(thresholds_server, fmr, message):
    from tests.server_fixtures import request

    base, *_ = thresholds_server
    # a JSON body: were it read, the answer would be 415 not_multipart
    status, body = request(base, "POST", f"/v1/search?k=2&fmr={fmr}", b"{}", "application/json")
    assert status == 422 and body == {"error": "invalid_fmr", "message": message}


def test_a_bundle_without_thresholds_serves_without_match(page_server):
    from tests.server_fixtures import post_images, request

    base, folder, root, manifest = page_server
    files = [("image", "q.png", (root / _train_image(manifest)).read_bytes())]
    status, body = post_images(base, "/v1/search?k=3", files)
    assert status == 200 and "operating_point" not in body
    assert all("match" not in h for h in body["results"][0]["neighbors"]) and len(body["results"][0]["neighbors"]) == 3
    status, body = post_images(base, "/v1/search?k=3&fmr=0.01", files)
    assert status == 422 and body["error"] == "invalid_fmr"
    assert body["message"] == ("fmr 0.01 asked, but no thresholds in this bundle: match omitted (rebuild the bundle "
                               "with the evaluate stage's thresholds.json)")
    status, info = request(base, "GET", "/v1/info")
    assert info["match"] == {"note": "no thresholds in this bundle: match omitted (rebuild the bundle with the "
                                     "evaluate stage's thresholds.json)"}


def test_rerank_qe_orders_by_the_expanded_query_and_decides_match_on_the_cosine(thresholds_server):
    from tests.server_fixtures import deepmetric, post_images, request

    base, folder, root, manifest = thresholds_server
    image = root / _train_image(manifest)
    files = [("image", "q.png", image.read_bytes())]
    status, body = post_images(base, "/v1/search?k=6&rerank=qe", files)
    assert status == 200, body
    hits = body["results"][0]["neighbors"]
    assert body["rerank"] == "qe" and len(hits) == 6
    qe = [h["qe_score"] for h in hits]
    assert qe == sorted(qe, reverse=True)
    assert [h["match"] for h in hits] == [h["score"] >= body["operating_point"]["threshold"] for h in hits]
    status, plain = post_images(base, "/v1/search?k=6&rerank=none", files)
    assert status == 200 and "rerank" not in plain
    assert all("qe_score" not in h for h in plain["results"][0]["neighbors"])
    # the same answer from the command line
    proc = deepmetric("search", "--bundle", str(folder), str(image), "-k", "6", "--rerank", "qe")
    assert proc.returncode == 0, proc.stderr
    local = json.loads(proc.stdout)["results"][0]["neighbors"]
    assert [(h["id"], h["match"]) for h in local] == [(h["id"], h["match"]) for h in hits]
    np.testing.assert_allclose([h["qe_score"] for h in local], qe, atol=1e-5)
    status, body = request(base, "POST", "/v1/search?k=2&rerank=dba", b"{}", "application/json")
    assert status == 422 and body == {"error": "invalid_rerank",
                                      "message": "rerank must be one of ['none', 'qe'], got 'dba'"}
    proc = deepmetric("search", "--bundle", str(folder), str(image), "--rerank", "dba")
    assert proc.returncode == 3 and "--rerank must be one of ['none', 'qe'], got 'dba'" in proc.stderr
