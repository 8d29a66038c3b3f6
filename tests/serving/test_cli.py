"""`deepmetric search` and `deepmetric info` on a real bundle; bad bundle / image / k → message + non-zero exit."""

from __future__ import annotations

import json

import pytest

from tests.deploy_fixtures import make_bundle, make_dataset, onnx_model
from tests.server_fixtures import deepmetric as cli


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "data"
    manifest = make_dataset(root)
    bundle = make_bundle(tmp / "bundle", root, manifest, onnx_model(),
                         index={"factory": "HNSW8", "search": {"efSearch": 40}})
    return tmp, root, manifest, bundle


def test_info_prints_the_manifest(env):
    *_, bundle = env
    proc = cli("info", "--bundle", str(bundle))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads((bundle / "manifest.json").read_text())
    assert json.loads(proc.stdout)["search_params"] == {"efSearch": 40}


def test_search_prints_neighbours(env):
    tmp, root, manifest, bundle = env
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    imgs = [str(root / test["path"][0]), str(root / test["path"][7])]
    proc = cli("search", "--bundle", str(bundle), *imgs, "-k", "4")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [r["image"] for r in out["results"]] == imgs
    assert all(len(r["neighbors"]) == 4 for r in out["results"])
    assert out["results"][0]["neighbors"][0]["path"] == test["path"][0]
    assert out["results"][1]["neighbors"][0]["path"] == test["path"][7]


def test_bad_image_bad_k_bad_bundle(env, tmp_path):
    tmp, root, manifest, bundle = env
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    proc = cli("search", "--bundle", str(bundle), str(junk))
    assert proc.returncode == 3 and "junk.jpg" in proc.stderr and "not an image" in proc.stderr
    good = str(root / manifest["path"][0])
    proc = cli("search", "--bundle", str(bundle), good, "-k", "0")
    assert proc.returncode == 3 and "-k must be in [1, 36]" in proc.stderr
    proc = cli("info", "--bundle", str(tmp_path))
    assert proc.returncode == 2 and "manifest.json" in proc.stderr


def test_search_refuses_a_thin_image_naming_the_limit(env, tmp_path):
    from PIL import Image

    *_, bundle = env
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 100_000)).save(thin)
    proc = cli("search", "--bundle", str(bundle), str(thin))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "thin.png" in proc.stderr and "limit of 100:1 (parameter max_aspect_ratio)" in proc.stderr
    proc = cli("search", "--bundle", str(bundle), str(thin), "--max-aspect-ratio", "0.5")
    assert proc.returncode == 3 and "max_aspect_ratio" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_bad_port_and_busy_port_are_clear_errors(env):
    import socket

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
