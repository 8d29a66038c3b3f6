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


def test_search_a_folder_writes_the_results_table_and_page_and_resumes(env, tmp_path, query_photos):
    import pandas as pd

    from tests.server_fixtures import deepmetric_here

    *_, bundle = env
    queries, test = query_photos(8)
    out = tmp_path / "results.csv"
    args = ("search", "--bundle", str(bundle), str(queries), "--out", str(out), "-k", "3", "--html", "--no-progress")
    proc = deepmetric_here(*args)
    assert proc.returncode == 0, proc.stderr
    assert "8 queries x 3 neighbours" in proc.stderr and f"results page: {tmp_path / 'results.html'}" in proc.stderr
    res = pd.read_csv(out)
    assert list(res.columns) == ["query", "query_label", "rank", "id", "label", "class_name", "path", "score",
                                 "same_class"]
    assert len(res) == 24 and res.groupby("query")["rank"].apply(list).map(lambda r: r == [1, 2, 3]).all()
    first = res[res["rank"] == 1].set_index("query")
    for path, name in zip(test["path"], test["class_name"]):
        q = f"{name}/{path.rsplit('/', 1)[1]}"
        # each query is a gallery image: its nearest neighbour is itself, of its own class
        assert first.loc[q, "path"] == path and bool(first.loc[q, "same_class"]) and first.loc[q, "query_label"] == name
        assert first.loc[q, "score"] > 0.999
    page = (tmp_path / "results.html").read_text()
    assert page.count("<tr>") == 8 and page.count("data:image/webp;base64,") == 24 and "class='hit'" in page
    before = out.read_bytes()
    again = deepmetric_here(*args[:-2], "--no-progress")
    assert again.returncode == 0 and out.read_bytes() == before  # every query was done: nothing redone


def test_search_a_table_cuts_the_queries_to_their_boxes(env, tmp_path, query_photos):
    import numpy as np
    import pandas as pd
    from PIL import Image

    from tests.server_fixtures import deepmetric_here

    *_, bundle = env
    queries, _ = query_photos(4)
    rows = []
    for i, p in enumerate(sorted(queries.rglob("*.png"))):
        img = np.asarray(Image.open(p).convert("RGB"))
        framed = np.zeros((img.shape[0] + 20, img.shape[1] + 30, 3), np.uint8)  # the image inside a black frame
        framed[5:5 + img.shape[0], 10:10 + img.shape[1]] = img
        Image.fromarray(framed).save(tmp_path / f"framed{i}.png")
        rows.append({"path": f"framed{i}.png", "x_1": 10, "y_1": 5, "x_2": 10 + img.shape[1], "y_2": 5 + img.shape[0],
                     "original": p.relative_to(queries).as_posix()})
    pd.DataFrame(rows).to_csv(tmp_path / "framed.csv", index=False)
    pd.DataFrame([{"path": r["original"]} for r in rows]).to_csv(queries / "plain.csv", index=False)
    for table, out in ((tmp_path / "framed.csv", "a.csv"), (queries / "plain.csv", "b.csv")):
        proc = deepmetric_here("search", "--bundle", str(bundle), str(table), "--out", str(tmp_path / out), "-k", "4",
                               "--no-progress")
        assert proc.returncode == 0, proc.stderr
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    assert a["id"].tolist() == b["id"].tolist() and a["same_class"].isna().all()
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)


def test_bulk_search_bad_usage_is_named_with_exit_3(env, tmp_path, query_photos):
    from tests.server_fixtures import deepmetric_here

    *_, bundle = env
    queries, _ = query_photos(2)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    cases = {
        "is a folder: search a folder or a table with --out results.csv": [str(queries)],
        "--html needs --out results.csv": [str(queries), "--html"],
        "give one folder or table to search, got 2 arguments": [str(queries), str(queries), "--out", "r.csv"],
        "is not a results table of `deepmetric search`": [str(queries), "--out", str(tmp_path / "other.csv")],
        "--fmr and --rerank apply to a search of image files": [str(queries), "--out", "r.csv", "--fmr", "0.01"],
    }
    for words, extra in cases.items():
        proc = deepmetric_here("search", "--bundle", str(bundle), *extra, "--no-progress")
        assert proc.returncode == 3 and words in proc.stderr and "Traceback" not in proc.stderr, (words, proc.stderr)
