"""Live gallery updates: `update_gallery` on real bundles (faiss, onnxruntime); the command: tests/cli/test_gallery.py."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.gallery import GalleryError, NewItem, update_gallery
from deepmetric.data.images import ImageLimits
from tests.deploy_fixtures import draw_image, make_bundle, make_dataset, onnx_model
from tests.fixtures import png_bytes


@pytest.fixture(scope="module")
def env(tmp_path_factory, deploy_bundle):
    """The session's default bundle (tests/conftest.py; only read here: updates go to new folders)."""
    bundle, root, _ = deploy_bundle
    tmp = tmp_path_factory.mktemp("gallery")
    new = tmp / "new"
    new.mkdir()
    for i in range(3):
        (new / f"n{i}.png").write_bytes(png_bytes(draw_image(7, 50 + i, (44, 40))))
    return tmp, root, bundle, new


def _top(bundle_dir, image_path):
    from deepmetric.data.transforms import load_eval_image

    b = load_bundle(bundle_dir)
    return b.search(b.embed(load_eval_image(image_path, b.spec)[None]), 1)[0][0]


def test_add_then_remove_keeps_ids_stable(env, tmp_path):
    tmp, root, src, new = env
    old = load_bundle(src)
    v1 = tmp_path / "v1"
    out = update_gallery(src, v1, add=[NewItem(str(new / "n0.png"), 7), NewItem(str(new / "n1.png"), 99, "brand new")])
    assert out["added_ids"] == [36, 37] and out["gallery_size"] == 38 and out["gallery_version"] == 1
    b1 = load_bundle(v1)
    ids = b1.ids
    pd.testing.assert_frame_equal(ids.iloc[:36].reset_index(drop=True), old.ids.reset_index(drop=True))
    assert list(ids["class_name"].iloc[36:]) == ["class_7", "brand new"]  # a known label keeps its class name
    m = b1.manifest
    assert m["lineage"]["parent_manifest_sha256"] == old.manifest["manifest_sha256"]
    assert m["lineage"]["next_id"] == 38 and m["model_version"] == old.manifest["model_version"]
    assert m["index_version"] != old.manifest["index_version"] and m["gallery_update"]["added"] == 2
    hit = _top(v1, new / "n1.png")
    assert hit["id"] == 37 and hit["score"] > 0.999 and hit["class_name"] == "brand new"
    if old.thumbnails is not None:
        assert b1.thumbnails.count == 38 and b1.thumbnails.get(0) == old.thumbnails.get(0)

    v2 = tmp_path / "v2"
    out = update_gallery(v1, v2, remove=[3, 36])
    b2 = load_bundle(v2)
    assert out["removed_ids"] == [3, 36] and b2.gallery_size == 36 and 3 not in set(b2.ids["id"])
    assert b2.manifest["lineage"]["gallery_version"] == 2
    # The other items keep their ids and still find themselves.
    test_paths = list(b2.ids["path"].iloc[:6])
    for item_id, rel in zip(b2.ids["id"].iloc[:6], test_paths):
        if (root / rel).is_file():
            assert _top(v2, root / rel)["id"] == item_id
    assert _top(v2, new / "n1.png")["id"] == 37
    if b2.thumbnails is not None:
        assert b2.thumbnails.get(b2.row_of(37)) == b1.thumbnails.get(b1.row_of(37)) and b2.row_of(3) is None
    # A removed id is never given out again.
    out = update_gallery(v2, v2, add=[NewItem(str(new / "n2.png"), 7)])  # in place
    assert out["added_ids"] == [38] and load_bundle(v2).manifest["lineage"]["gallery_version"] == 3


@pytest.mark.parametrize("factory", ["HNSW8", "IVF4,Flat"])
def test_remove_works_for_graph_and_inverted_file_indexes(env, tmp_path, factory):
    tmp, root, _, new = env

    src = make_bundle(tmp_path / "b", root, make_dataset(tmp_path / "d"), onnx_model(), index={"factory": factory})
    out = update_gallery(src, tmp_path / "v", remove=[0, 5], add=[NewItem(str(new / "n0.png"), 7)])
    b = load_bundle(tmp_path / "v")
    assert b.gallery_size == 35 and out["added_ids"] == [36] and b.manifest["index_factory"] == factory
    assert _top(tmp_path / "v", new / "n0.png")["id"] == 36
    rel = b.ids["path"].iloc[3]
    assert _top(tmp_path / "v", tmp_path / "d" / rel)["id"] == int(b.ids["id"].iloc[3])


def test_bad_updates_are_refused_and_write_nothing(env, tmp_path):
    from PIL import Image

    tmp, root, src, new = env
    dest = tmp_path / "dest"
    shutil.copytree(src, dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    with pytest.raises(GalleryError, match=r"no gallery item has id \[999\]"):
        update_gallery(dest, remove=[999])
    thin = tmp_path / "thin.png"
    Image.new("L", (1, 100_000)).save(thin)
    with pytest.raises(GalleryError, match="thin.png: refused as too thin.*limit of 100:1"):
        update_gallery(dest, add=[NewItem(str(new / "n0.png"), 1), NewItem(str(thin), 1)])
    with pytest.raises(GalleryError, match="nothing to do"):
        update_gallery(dest)
    with pytest.raises(GalleryError, match="empty gallery"):
        update_gallery(dest, remove=list(range(36)))
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    data = bytearray((dest / "index.faiss").read_bytes())
    data[-3] ^= 0xFF
    (dest / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="index.faiss"):
        update_gallery(dest, add=[NewItem(str(new / "n0.png"), 1)])


def test_limits_reach_the_decode_of_added_images(env, tmp_path):
    """``limits=`` is what the added images are checked against: n0.png (44×40) passes the defaults, not an aspect
    ratio limit of 1.05:1 nor a pixel limit of 1,000; nothing is written."""
    tmp, root, src, new = env
    image = NewItem(str(new / "n0.png"), 7)
    with pytest.raises(GalleryError, match=r"n0.png: refused as too thin.*limit of 1.05:1 "
                                           r"\(parameter max_aspect_ratio\)"):
        update_gallery(src, tmp_path / "a", add=[image], limits=ImageLimits(max_aspect_ratio=1.05))
    with pytest.raises(GalleryError, match=r"n0.png: refused as a decompression bomb.*limit of 1,000 "
                                           r"\(parameter max_pixels\)"):
        update_gallery(src, tmp_path / "b", add=[image], limits=ImageLimits(max_pixels=1_000))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert update_gallery(src, tmp_path / "c", add=[image])["added_ids"] == [36]


def test_add_and_remove_keep_the_match_thresholds(env, thresholds_bundle, tmp_path):
    """The thresholds belong to the model: a new gallery version carries the same thresholds.json, byte for byte."""
    _, _, _, new = env
    src = thresholds_bundle[0]
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    update_gallery(src, v1, add=[NewItem(str(new / "n0.png"), 7)])
    update_gallery(v1, v2, remove=[0])
    for folder in (v1, v2):
        b = load_bundle(folder)
        assert (folder / "thresholds.json").read_bytes() == (src / "thresholds.json").read_bytes()
        assert b.manifest["thresholds"] == {"file": "thresholds.json"}
        assert b.thresholds == load_bundle(src).thresholds
