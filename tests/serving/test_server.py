"""The real server (`deepmetric serve`, uvicorn) on a free loopback port, driven over a socket with urllib: the app
as a whole (search, embed, every refusal, the process modes)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.deploy_fixtures import draw_image
from tests.fixtures import png_bytes
from tests.server_fixtures import (MAX_IMAGES, MAX_PIXELS, MAX_UPLOAD, memory_mib, multipart, post_images, raw_http,
                                   request, start_server, stop)

env_pid: list[int] = []  # the module server's process id (it serves in-process with one worker)


@pytest.fixture(scope="module")
def env(deploy_bundle):
    """A server of its own over the session's default bundle (tests/conftest.py; tests copy it to alter it)."""
    bundle, root, manifest = deploy_bundle
    proc, base = start_server(bundle)
    env_pid[:] = [proc.pid]
    yield base, bundle, root, manifest
    stop(proc)


def test_health_and_info(env):
    base, bundle, *_ = env
    status, body = request(base, "GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    status, info = request(base, "GET", "/v1/info")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert status == 200
    assert {k: info[k] for k in manifest} == manifest
    assert info["limits"]["max_images"] == MAX_IMAGES


def test_embed_matches_the_bundle_model(env):
    base, bundle, root, manifest = env
    rels = list(manifest[manifest["split"] == "test"]["path"][:2])
    files = [("image", Path(r).name, (root / r).read_bytes()) for r in rels]
    status, body = post_images(base, "/v1/embed", files)
    assert status == 200 and body["dim"] == 16 and len(body["embeddings"]) == 2
    got = np.array([e["embedding"] for e in body["embeddings"]], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Same numbers as the index stage's own preprocessing + model (the vectors stored in the index).
    from deepmetric.bundle import load_bundle

    b = load_bundle(bundle)
    stored = b.index.reconstruct_n(0, 2)
    ids = list(b.ids["path"][:2])
    assert ids == rels
    np.testing.assert_allclose(got, stored, atol=1e-5)


def test_search_returns_k_neighbours_with_labels(env):
    base, _, root, manifest = env
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    files = [("image", "q0.png", (root / test["path"][0]).read_bytes()),
             ("image", "q1.jpg", png_bytes(draw_image(5, 99), "JPEG"))]
    status, body = post_images(base, "/v1/search?k=3", files)
    assert status == 200 and body["k"] == 3 and len(body["results"]) == 2
    first = body["results"][0]
    assert first["image"] == "q0.png" and len(first["neighbors"]) == 3
    top = first["neighbors"][0]
    assert top["path"] == test["path"][0] and top["label"] == int(test["label"][0]) and top["score"] > 0.999
    assert set(top) == {"id", "label", "class_name", "path", "score"}
    scores = [n["score"] for n in first["neighbors"]]
    assert scores == sorted(scores, reverse=True)
    status, body = post_images(base, "/v1/search", files[:1])
    assert status == 200 and body["k"] == 10 and len(body["results"][0]["neighbors"]) == 10


def _expect(status_body, status: int, code: str, *words: str):
    got_status, body = status_body
    assert got_status == status, body
    assert body["error"] == code, body
    for w in words:
        assert w in body["message"], body


def test_bad_inputs_get_4xx_and_the_service_stays_up(env):
    base, _, root, manifest = env
    good = (root / manifest["path"][0]).read_bytes()
    png = png_bytes(draw_image(3, 0, (120, 120)))
    bomb = png_bytes(Image.new("RGB", (2000, 1000), (255, 255, 255)))  # 2 Mpx in a few kB
    assert len(bomb) < MAX_UPLOAD
    noise = np.random.default_rng(0).integers(0, 256, size=MAX_UPLOAD + 1000, dtype=np.uint8).tobytes()
    for path in ["/v1/embed", "/v1/search?k=2"]:
        _expect(post_images(base, path, [("image", "a.txt", b"this is not an image")]), 415, "not_an_image", "a.txt")
        _expect(post_images(base, path, [("image", "t.png", png[: len(png) // 2])]), 400, "truncated_image", "t.png")
        _expect(post_images(base, path, [("image", "bomb.png", bomb)]), 413, "image_too_large", "decompression bomb")
        _expect(post_images(base, path, [("image", "big.bin", noise)]), 413, "upload_too_large", "max_upload_bytes")
        _expect(post_images(base, path, [("picture", "x.png", good)]), 400, "no_image", "'image'", "picture")
        _expect(post_images(base, path, [], fields=[("image", "text")]), 400, "no_image", "not a file")
        for n in (MAX_IMAGES + 1, MAX_IMAGES + 2, 34):  # 34 and more were a 400 bad_multipart (issue 23)
            _expect(post_images(base, path, [("image", f"{i}.png", good) for i in range(n)]),
                    413, "too_many_images", "max_images")
        _expect(request(base, "POST", path, b"{}", "application/json"), 415, "not_multipart", "multipart/form-data")
        # one bad image among good ones refuses the whole request, naming the bad one
        status, body = post_images(base, path, [("image", "ok.png", good), ("image", "bad.png", png[:40])])
        assert status in (400, 415) and body["error"] in {"truncated_image", "corrupt_image", "not_an_image"}
        assert "bad.png" in body["message"]
    gallery = 36
    for k in ["0", "-1", str(gallery + 1), "ten"]:
        _expect(post_images(base, f"/v1/search?k={k}", [("image", "ok.png", good)]), 422, "invalid_k", "k must")
    assert post_images(base, f"/v1/search?k={gallery}", [("image", "ok.png", good)])[0] == 200
    _expect(request(base, "GET", "/nope"), 404, "not_found")
    _expect(request(base, "GET", "/v1/search"), 405, "method_not_allowed")
    assert request(base, "GET", "/healthz")[0] == 200


def test_unparseable_request_gets_the_json_error_shape(env):
    base, *_ = env
    status, headers, body = raw_http(base, b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
                                           b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    err = json.loads(body)
    assert err["error"] == "bad_request" and "Content-Length" in err["message"]
    assert request(base, "GET", "/healthz")[0] == 200


def test_unterminated_multipart_is_bad_multipart(env):
    base, _, root, manifest = env
    good = (root / manifest["path"][0]).read_bytes()
    body, ctype = multipart([("image", "a.png", good)])
    closing = body.rindex(b"--")  # the final "--BOUNDARY--\r\n" starts 2 bytes before the boundary
    for cut in (body[: body.rindex(b"\r\n--")], body[: len(body) // 2], body[:closing]):
        _expect(request(base, "POST", "/v1/search?k=2", cut, ctype), 400, "bad_multipart", "not terminated")
    _expect(request(base, "POST", "/v1/embed", body, "multipart/form-data"), 400, "bad_multipart", "boundary")
    assert request(base, "POST", "/v1/search?k=2", body, ctype)[0] == 200


def test_thin_images_refused_with_bounded_server_memory(env):
    # 1×100,000 (a 300-byte PNG) passes the pixel limit; before the fix it cost the server 5 s and 1.5 GB.
    base, *_ = env
    pid = env_pid[0]
    before = memory_mib(pid, "VmHWM")
    thin = png_bytes(Image.new("L", (1, 100_000), 200))
    wide = png_bytes(Image.new("L", (2_000_000, 1), 200))
    for path in ["/v1/embed", "/v1/search?k=2"]:
        _expect(post_images(base, path, [("image", "thin.png", thin)]), 413, "image_too_large", "thin.png",
                "limit of 100:1 (parameter max_aspect_ratio)")
        _expect(post_images(base, path, [("image", "wide.png", wide)]), 413, "image_too_large", "wide.png",
                f"limit of {MAX_PIXELS:,} (parameter max_pixels)")
    assert memory_mib(pid, "VmHWM") - before < 50
    assert request(base, "GET", "/healthz")[0] == 200


def test_multi_worker_mode(env):
    _, bundle, root, manifest = env
    proc, base = start_server(bundle, "--workers", "2")
    try:
        pids = set()
        for _ in range(6):
            status, body = request(base, "GET", "/healthz")
            pids.add(body["pid"])
        status, body = post_images(base, "/v1/search?k=2", [("image", "a.png", (root / manifest["path"][0]).read_bytes())])
        assert status == 200 and len(body["results"][0]["neighbors"]) == 2
        assert proc.pid not in pids
    finally:
        stop(proc)


def test_a_stalled_body_gets_408_and_a_disconnect_is_one_log_line(env):
    """A client that declares more bytes than it sends was held open indefinitely (70 s observed), and one that
    disconnected mid-upload wrote a ~60-line traceback (issue 23): now a 408 after --body-timeout-s, and one line."""
    base, bundle, root, manifest = env
    proc, base = start_server(bundle, "--body-timeout-s", "1", "--log-level", "info")
    host, port = base.rsplit("/", 1)[-1].split(":")
    body, ctype = multipart([("image", "a.png", (root / manifest["path"][0]).read_bytes())])
    head = (f"POST /v1/search?k=2 HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) + 5000}\r\n\r\n").encode()
    try:
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(head + body)  # 5,000 bytes short
            t0 = time.monotonic()
            answer = b""
            while chunk := s.recv(65536):  # the server closes the connection after its answer
                answer += chunk
            waited = time.monotonic() - t0
        status_line, _, rest = answer.partition(b"\r\n")
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert status_line.split()[1] == b"408" and b"connection: close" in headers.lower(), answer[:300]
        err = json.loads(payload)
        assert err["error"] == "body_timeout" and "body_timeout_s" in err["message"]
        assert f"{len(body):,} of {len(body) + 5000:,} bytes received" in err["message"]
        assert 0.9 < waited < 10

        for _ in range(3):  # three clients give up mid-upload
            with socket.create_connection((host, int(port)), timeout=30) as s:
                s.sendall(head + body[:100])
                time.sleep(0.3)
        time.sleep(0.5)
        assert request(base, "POST", "/v1/search?k=2", body, ctype)[0] == 200
    finally:
        stop(proc)
    log = proc.stdout.read().decode()
    gone = [line for line in log.splitlines() if "disconnected during POST /v1/search" in line]
    assert len(gone) == 3 and "(after 100 of" in gone[0], log[-3000:]
    assert "Traceback" not in log and "ClientDisconnect" not in log, log[-3000:]
