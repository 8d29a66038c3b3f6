"""Searching a bundle with many query images (the library under `deepmetric search --out`): the results table,
its resume rule, the model's checksum, the HTML page (escaped, self-contained)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.search import RESULT_COLUMNS, model_bytes, results_page, search_items


@pytest.fixture
def queries(deploy_bundle, tmp_path):
    folder, root, manifest = deploy_bundle
    test = manifest[manifest["split"] == "test"].reset_index(drop=True).iloc[:3]
    items = pd.DataFrame({"path": test["path"], "label": ["<b>class</b>", None, str(test["label"][2])]})
    return load_bundle(folder), items, root


def test_results_rows_same_class_and_the_page(queries, tmp_path):
    bundle, items, root = queries
    res = search_items(bundle, items, root, tmp_path / "r.csv", k=2, progress=False)
    assert list(res.columns) == list(RESULT_COLUMNS) and len(res) == 6
    assert res["query_label"].tolist()[2:4] == ["", ""] and res["same_class"].iloc[2] is None
    assert bool(res["same_class"].iloc[4]) is True  # a label written as the gallery's label number matches
    page = results_page(bundle, res, items, root)
    assert page.startswith("<!doctype html>") and page.count("<tr>") == 3
    assert "&lt;b&gt;class&lt;/b&gt;" in page and "<b>class</b>" not in page  # names are escaped
    assert "http" not in page.split("</style>", 1)[1]  # no external resource: images are data URIs
    short = results_page(bundle, res, items, root, max_queries=1)
    assert short.count("<tr>") == 1 and "The first 1 queries are shown" in short


def test_a_rerun_searches_only_new_queries_and_k_is_checked(queries, tmp_path):
    bundle, items, root = queries
    out = tmp_path / "r.csv"
    search_items(bundle, items.iloc[:2], root, out, k=2, progress=False)
    res = search_items(bundle, items, root, out, k=2, progress=False)
    assert res["query"].tolist() == [p for p in items["path"] for _ in range(2)]
    with pytest.raises(ValueError, match=r"-k must be in \[1, 36\]"):
        search_items(bundle, items, root, tmp_path / "x.csv", k=37, progress=False)


def test_the_model_is_checked_when_it_is_read_again(deploy_bundle, tmp_path):
    folder = shutil.copytree(deploy_bundle[0], tmp_path / "b")
    bundle = load_bundle(folder)
    assert len(model_bytes(bundle)) > 1000
    (folder / "model.onnx").write_bytes(b"other")
    with pytest.raises(BundleError, match="changed on disk since the bundle was loaded"):
        model_bytes(bundle)


def test_the_page_shows_each_neighbours_own_thumbnail_after_items_were_removed(queries, tmp_path):
    """The page took a thumbnail by id as if it were the gallery row: after a removal and a compaction (rows shift
    below the removed id) it showed the next item's picture, or none for the last."""
    from deepmetric.bundle.gallery import compact_gallery, update_gallery
    from deepmetric.bundle.search import _data_uri

    bundle, items, root = queries
    update_gallery(bundle.root, tmp_path / "v1", remove=[0])
    compact_gallery(tmp_path / "v1", tmp_path / "v2")
    b = load_bundle(tmp_path / "v2")
    assert b.row_of(5) == 4
    res = search_items(b, items, root, tmp_path / "r.csv", k=3, progress=False)
    page = results_page(b, res, items, root)
    for item in res["id"]:
        assert _data_uri(b.thumbnails.get(b.row_of(int(item))), b.thumbnails.media_type) in page
