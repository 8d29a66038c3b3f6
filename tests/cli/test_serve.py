"""`deepmetric serve`: the refusals before anything is served (flags, admin token, bundle, port) name the problem
and exit 3 (bad input) or 2 (bundle refused), with no traceback. Serving itself: tests/serving/test_server.py;
`serve --store` (a gallery in Milvus) end to end, with its refusals and an outage: here, at the end."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

from deepmetric.data.transforms import load_eval_image
from tests.fixtures import free_port
from tests.server_fixtures import deepmetric as cli
from tests.server_fixtures import deepmetric_here


def test_serve_bad_port_and_busy_port_are_clear_errors(env):
    *_, bundle = env
    proc = cli("serve", "--bundle", str(bundle), "--port", "99999")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "argument --port: must be in [0, 65535]" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = cli("serve", "--bundle", str(bundle), "--port", str(port))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_serve_refuses_a_tampered_bundle(env, tmp_path):
    _, _, _, bundle = env
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "index.faiss").read_bytes())
    data[-5] ^= 0xFF
    (copy / "index.faiss").write_bytes(bytes(data))
    for workers in ("1", "2"):  # with several workers the supervisor verifies it in a child process
        proc = cli("serve", "--bundle", str(copy), "--port", str(free_port()), "--workers", workers)
        assert proc.returncode == 2 and "index.faiss" in proc.stderr and "sha256" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("flags", "words"), [
    (["--workers", "0"], ["--workers must be >= 1"]),
    (["--max-aspect-ratio", "0.5"], ["invalid setting", "max_aspect_ratio", "0.5"]),
    (["--max-pixels", "0"], ["invalid setting", "max_pixels"]),
    (["--max-pixels", str(10**9)], ["invalid setting", "max_pixels", "Pillow's own limit"]),
    (["--max-images", "0"], ["invalid setting", "max_images"]),
    (["--batch-window-ms", "500"], ["invalid setting", "batch_window_ms"]),
])
def test_bad_settings_are_refused_before_the_bundle_is_read(tmp_path, flags, words):
    # the bundle does not exist: the flags are checked first (exit 3), nothing is loaded or bound
    proc = deepmetric_here("serve", "--bundle", str(tmp_path / "none"), *flags)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("deepmetric: ") and all(w in proc.stderr for w in words), proc.stderr


def test_admin_token_file_must_be_readable_and_long_enough(tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPMETRIC_ADMIN_TOKEN", raising=False)
    short = tmp_path / "short"
    short.write_text("short\n")
    proc = deepmetric_here("serve", "--bundle", str(tmp_path / "none"), "--admin-token-file", str(short))
    assert proc.returncode == 3 and "the admin token must be at least 16 characters" in proc.stderr
    missing = tmp_path / "missing"
    proc = deepmetric_here("serve", "--bundle", str(tmp_path / "none"), "--admin-token-file", str(missing))
    assert proc.returncode == 3 and f"cannot read --admin-token-file {missing}: No such file" in proc.stderr
    # a good token passes on to the bundle, which is refused (exit 2: the token check is done)
    (tmp_path / "good").write_text("0123456789abcdef\n")
    proc = deepmetric_here("serve", "--bundle", str(tmp_path / "none"), "--admin-token-file", str(tmp_path / "good"))
    assert proc.returncode == 2 and "bundle refused" in proc.stderr and "not a directory" in proc.stderr


def test_serve_store_answers_like_the_bundle_and_503s_while_the_store_is_away(env, deploy_bundle, tmp_path):
    """`serve --store` over a real socket: the same neighbours as the faiss server for the same images; the
    store stopped → 503 store_unavailable, restarted → answers again; refusals at start (exit 2, 5)."""
    from deepmetric.bundle import load_bundle
    from deepmetric.store.milvus import export_gallery
    from tests.server_fixtures import post_images, request, start_server, stop
    from tests.store_fixtures import MilvusLiteServer

    _, root, manifest, bundle = env
    milvus = MilvusLiteServer(tmp_path / "m.db").start()
    procs = []
    try:
        export_gallery(load_bundle(bundle), milvus.uri)
        proc = cli("serve", "--bundle", str(deploy_bundle[0]), "--port", str(free_port()), "--store", milvus.uri)
        assert proc.returncode == 2 and "exported from bundle manifest" in proc.stderr, proc.stderr
        proc = cli("serve", "--bundle", str(bundle), "--port", str(free_port()), "--store",
                   f"http://127.0.0.1:{free_port()}")
        assert proc.returncode == 5 and "cannot reach Milvus" in proc.stderr and "Traceback" not in proc.stderr
        proc = cli("serve", "--bundle", str(bundle), "--port", str(free_port()), "--store", milvus.uri,
                   "--collection", "other")
        assert proc.returncode == 3 and "no collection 'other'" in proc.stderr, proc.stderr

        faiss_proc, faiss_base = start_server(bundle)
        procs.append(faiss_proc)
        store_proc, store_base = start_server(bundle, "--store", milvus.uri)
        procs.append(store_proc)
        files = [("image", p, (root / p).read_bytes()) for p in manifest["path"].iloc[[12, 20, 33, 47]]]
        want = post_images(faiss_base, "/v1/search?k=6", files)
        got = post_images(store_base, "/v1/search?k=6", files)
        assert want[0] == got[0] == 200
        ids = [[(h["id"], h["label"], h["path"]) for h in r["neighbors"]] for r in want[1]["results"]]
        assert [[(h["id"], h["label"], h["path"]) for h in r["neighbors"]] for r in got[1]["results"]] == ids
        assert {k for k in got[1]} == {k for k in want[1]} and got[1]["k"] == 6
        assert got[1].get("operating_point") == want[1].get("operating_point")  # match flags: the same semantics
        assert [[h.get("match") for h in r["neighbors"]] for r in got[1]["results"]] == \
               [[h.get("match") for h in r["neighbors"]] for r in want[1]["results"]]
        status, body = post_images(store_base, "/v1/search?k=6&rerank=qe", files[:1])
        assert status == 422 and body["error"] == "invalid_rerank" and "--store" in body["message"]
        assert post_images(store_base, "/v1/search?k=37", files[:1])[1]["error"] == "invalid_k"

        milvus.stop()
        status, body = post_images(store_base, "/v1/search?k=6", files)
        assert status == 503 and body["error"] == "store_unavailable" and milvus.uri in body["message"], body
        status, health = request(store_base, "GET", "/healthz")  # alive, and says what it searches
        assert status == 200 and health["store"] == {"uri": milvus.uri, "collection": "deepmetric_gallery"}
        assert post_images(store_base, "/v1/embed", files[:1])[0] == 200  # the model still answers
        milvus.start()
        status, body = post_images(store_base, "/v1/search?k=6", files)
        assert status == 200 and [[(h["id"], h["label"], h["path"]) for h in r["neighbors"]]
                                  for r in body["results"]] == ids
    finally:
        for p in procs:
            stop(p)
        milvus.stop()


def test_serve_store_with_several_workers(env, tmp_path):
    """Each worker opens its own client on a Milvus URI; a milvus-lite folder (one process at a time) is refused."""
    from deepmetric.bundle import load_bundle
    from deepmetric.store.milvus import export_gallery
    from tests.server_fixtures import post_images, start_server, stop
    from tests.store_fixtures import MilvusLiteServer

    _, root, manifest, bundle = env
    proc = cli("serve", "--bundle", str(bundle), "--port", str(free_port()), "--workers", "2", "--store",
               str(tmp_path / "x.db"))
    assert proc.returncode == 3 and "--workers 1" in proc.stderr, proc.stderr
    milvus = MilvusLiteServer(tmp_path / "m.db").start()
    server = None
    try:
        loaded = load_bundle(bundle)
        export_gallery(loaded, milvus.uri)
        server, base = start_server(bundle, "--store", milvus.uri, "--workers", "2")
        p = manifest["path"].iloc[40]
        status, body = post_images(base, "/v1/search?k=4", [("image", p, (root / p).read_bytes())])
        assert status == 200, body
        want = loaded.search(loaded.embed(np.stack([load_eval_image(str(root / p), loaded.spec)])), 4)[0]
        assert [h["id"] for h in body["results"][0]["neighbors"]] == [h["id"] for h in want]
    finally:
        if server is not None:
            stop(server)
        milvus.stop()
