"""`deepmetric embed --bundle B <folder|table> --out embeddings.parquet` on the CLI tests' bundle: the same
embedding as the server returns over a real socket for the same file; resumable; bad input named with exit 3; runs
on an inference host (no torch, Kedro, GX)."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from deepmetric.index.bulk import embedding_matrix, read_embeddings
from tests.server_fixtures import deepmetric_here, host, post_images, start_server, stop


def test_embed_a_folder_gives_the_servers_embedding_of_each_file(env, tmp_path, query_photos):
    *_, bundle = env
    photos, test = query_photos(12)
    out = tmp_path / "emb.parquet"
    proc = deepmetric_here("embed", "--bundle", str(bundle), str(photos), "--out", str(out), "--processes", "2",
                           "--batch-size", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "12 embeddings of dimension 16" in proc.stderr
    table = read_embeddings(out)
    assert list(table.columns) == ["id", "path", "label", "embedding"] and len(table) == 12
    assert sorted(table.label.unique()) == sorted(test.class_name.unique())
    server, base = start_server(bundle)
    try:
        for i in (0, 5, 11):
            path = table.path[i]
            status, body = post_images(base, "/v1/embed", [("image", path, (photos / path).read_bytes())])
            assert status == 200, body
            np.testing.assert_allclose(embedding_matrix(table)[i], body["embeddings"][0]["embedding"], atol=1e-5)
    finally:
        stop(server)


def test_a_second_run_keeps_what_is_done_and_embeds_only_new_images(env, tmp_path, query_photos):
    *_, bundle = env
    photos, _ = query_photos(6)
    out = tmp_path / "emb.parquet"
    args = ("embed", "--bundle", str(bundle), str(photos), "--out", str(out), "--no-progress")
    assert deepmetric_here(*args).returncode == 0
    first = read_embeddings(out)
    extra = photos / "new" / "x.png"
    extra.parent.mkdir()
    shutil.copy(photos / first.path[0], extra)
    proc = deepmetric_here(*args)
    assert proc.returncode == 0 and "7 embeddings" in proc.stderr
    again = read_embeddings(out)
    pd.testing.assert_frame_equal(again.iloc[:6].drop(columns="embedding"), first.drop(columns="embedding"))
    assert again.path[6] == "new/x.png" and again.id[6] == 6
    np.testing.assert_allclose(embedding_matrix(again)[6], embedding_matrix(first)[0], atol=1e-6)


def test_bad_sources_and_flags_are_named_with_exit_3(env, tmp_path, query_photos):
    *_, bundle = env
    photos, _ = query_photos(4)
    out = str(tmp_path / "e.parquet")
    cases = {
        "no such folder or table": [str(tmp_path / "nope")],
        "missing column 'path'": [str(tmp_path / "t.csv")],
        "--processes must be >= 0": [str(photos), "--processes", "-1"],
        "not an image file": [str(photos)],
    }
    (tmp_path / "t.csv").write_text("file,label\na.png,1\n")
    bad = next(photos.rglob("*.png"))
    for words, extra in cases.items():
        if words == "not an image file":
            bad.write_bytes(b"junk")
        proc = deepmetric_here("embed", "--bundle", str(bundle), *extra, "--out", out, "--no-progress")
        assert proc.returncode == 3 and words in proc.stderr and "Traceback" not in proc.stderr, (words, proc.stderr)
    assert bad.name in proc.stderr


def test_embed_runs_on_an_inference_host(env, tmp_path, query_photos):
    *_, bundle = env
    photos, _ = query_photos(3)
    proc = host("embed", "--bundle", str(bundle), str(photos), "--out", str(tmp_path / "e.parquet"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert len(read_embeddings(tmp_path / "e.parquet")) == 3
