"""`deepmetric search` and `deepmetric info` on a real bundle (tests/cli/conftest.py); bad bundle / image / k →
message + non-zero exit."""

from __future__ import annotations

import json

from tests.server_fixtures import deepmetric as cli


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
