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


def test_search_gives_the_served_match_flags(thresholds_server):
    """`deepmetric search` and `/v1/search` (a real server over the same bundle) answer the same image with the same
    neighbours, operating point and `match` flags, at the default point and at --fmr / ?fmr=."""
    import numpy as np

    from tests.server_fixtures import post_images

    base, folder, root, manifest = thresholds_server
    image = root / manifest[manifest["split"] == "train"]["path"].iloc[1]
    for flags, query in (((), ""), (("--fmr", "0.001"), "&fmr=0.001"), (("--fmr", "1e-2"), "&fmr=0.01")):
        proc = cli("search", "--bundle", str(folder), str(image), "-k", "8", *flags)
        assert proc.returncode == 0, proc.stderr
        local = json.loads(proc.stdout)
        status, served = post_images(base, f"/v1/search?k=8{query}", [("image", image.name, image.read_bytes())])
        assert status == 200, served
        assert local["operating_point"] == served["operating_point"]
        mine, theirs = local["results"][0]["neighbors"], served["results"][0]["neighbors"]
        assert [(h["id"], h["match"]) for h in mine] == [(h["id"], h["match"]) for h in theirs]
        np.testing.assert_allclose([h["score"] for h in mine], [h["score"] for h in theirs], atol=1e-5)
    assert any(h["match"] for h in mine) and not all(h["match"] for h in mine)  # both values occur


def test_a_bad_fmr_is_refused_naming_the_operating_points(thresholds_bundle, env):
    folder, root, manifest = thresholds_bundle
    image = str(root / manifest["path"][0])
    proc = cli("search", "--bundle", str(folder), image, "--fmr", "0.02")
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "--fmr: fmr 0.02 is not an operating point of this bundle; available: 0.01, 0.001" in proc.stderr
    proc = cli("search", "--bundle", str(folder), image, "--fmr", "1.5")
    assert proc.returncode == 3 and "--fmr: fmr must be in (0, 1), got 1.5" in proc.stderr
    # a bundle without thresholds: no match flags, and --fmr is refused saying why
    *_, old = env
    proc = cli("search", "--bundle", str(old), image, "-k", "2")
    assert proc.returncode == 0 and "operating_point" not in json.loads(proc.stdout)
    assert all("match" not in h for h in json.loads(proc.stdout)["results"][0]["neighbors"])
    proc = cli("search", "--bundle", str(old), image, "--fmr", "0.01")
    assert proc.returncode == 3 and "no thresholds in this bundle: match omitted" in proc.stderr
