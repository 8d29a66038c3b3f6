"""Live gallery updates: `update_gallery` on real bundles (faiss, onnxruntime); the command: tests/cli/test_gallery.py."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.format import sha256
from deepmetric.bundle.gallery import CompactionPolicy, GalleryError, NewItem, compact_gallery, update_gallery
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


# --- segments, tombstones, compaction (issue 22) -------------------------------------------------------------

def _queries(bundle_dir, root, paths):
    from deepmetric.data.transforms import load_eval_image

    b = load_bundle(bundle_dir)
    return b.embed(np.stack([load_eval_image(p, b.spec) for p in paths]))


def test_an_update_adds_a_segment_and_links_the_files_it_does_not_change(env, tmp_path):
    tmp, root, src, new = env
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = update_gallery(src, v1, add=[NewItem(str(new / "n0.png"), 7), NewItem(str(new / "n1.png"), 7)])
    assert out["segments"] == 1 and not out["compacted"] and out["tombstones"] == 0
    m = load_bundle(v1).manifest
    assert m["segments"] == [{"index": "segment-00001.faiss", "ids": "segment-00001.parquet", "items": 2}]
    assert "tombstones" not in m and m["gallery_size"] == 38
    assert m["files"]["segment-00001.faiss"] == sha256((v1 / "segment-00001.faiss").read_bytes())
    shared = [n for n in before if n != "manifest.json"]
    for name in shared:  # the parent's files: the same inode, not a copy
        assert (v1 / name).stat().st_ino == (src / name).stat().st_ino, name
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the parent is untouched
    if m.get("thumbnails"):
        assert len(m["thumbnails"]["files"]) == len(load_bundle(src).manifest["thumbnails"]["files"]) + 1
    out = update_gallery(v1, v2, remove=[0, 37])
    m2 = load_bundle(v2).manifest
    assert m2["tombstones"] == {"file": "tombstones.parquet", "items": 2} and m2["gallery_size"] == 36
    assert pd.read_parquet(v2 / "tombstones.parquet")["id"].tolist() == [0, 37]
    assert (v2 / "segment-00001.faiss").stat().st_ino == (v1 / "segment-00001.faiss").stat().st_ino
    assert m2["lineage"]["index_sha256"] == m["lineage"]["index_sha256"] == load_bundle(src).manifest["files"]["index.faiss"]
    assert len({m2["index_version"], m["index_version"], load_bundle(src).manifest["index_version"]}) == 3
    with pytest.raises(GalleryError, match=r"no gallery item has id \[0\] \(\[0\] removed before"):
        update_gallery(v2, tmp_path / "v3", remove=[0])


def test_merged_search_equals_a_single_flat_index_of_the_same_items(env, tmp_path):
    """Base + segments − tombstones searched as one gives the ids and scores of one exact index over the live
    items (brute force here, and the compacted bundle), plain and with query expansion."""
    tmp, root, src, new = env
    v1, v2, v3 = tmp_path / "v1", tmp_path / "v2", tmp_path / "v3"
    update_gallery(src, v1, add=[NewItem(str(new / "n0.png"), 7)])
    update_gallery(v1, v2, add=[NewItem(str(new / "n1.png"), 3), NewItem(str(new / "n2.png"), 7)], remove=[2, 36])
    b = load_bundle(v2)
    assert len(b.segments) == 2 and b.gallery_size == 37 and list(b.removed) == [2, 36]
    live = np.concatenate([v for _, v in b.live_items(batch=5)])
    assert live.shape == (37, b.dim)
    live_ids = b.ids["id"].to_numpy()
    paths = [root / p for p in b.ids["path"].iloc[:8]] + [new / "n0.png", new / "n1.png"]
    q = _queries(v2, root, paths)
    exact = q @ live.T
    for k in (1, 5, 37):
        hits = b.search(q, k)
        for qi, row in enumerate(hits):
            order = np.argsort(-exact[qi], kind="stable")[:k]
            assert [h["id"] for h in row] == live_ids[order].tolist()
            np.testing.assert_allclose([h["score"] for h in row], exact[qi, order], rtol=1e-5, atol=1e-6)
            assert not {2, 36} & {h["id"] for h in row}
    out = compact_gallery(v2, v3)
    c = load_bundle(v3)
    assert out["compacted"] and not c.segments and not len(c.removed) and "segments" not in c.manifest
    assert c.ids["id"].tolist() == live_ids.tolist() and c.manifest["lineage"]["next_id"] == 39
    for rerank in (None, "qe"):
        a, z = b.search(q, 6, rerank), c.search(q, 6, rerank)
        assert [[h["id"] for h in r] for r in a] == [[h["id"] for h in r] for r in z]
        np.testing.assert_allclose([[h["score"] for h in r] for r in a], [[h["score"] for h in r] for r in z],
                                   rtol=1e-5, atol=1e-6)
    if c.thumbnails is not None:
        for item in (0, 37, 38):
            assert c.thumbnails.get(c.row_of(item)) == b.thumbnails.get(b.row_of(item))
        assert b.row_of(2) is None and b.row_of(36) is None and c.thumbnails.count == 37


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat", "IVF4,SQ8", "IVF4,PQ4x4", "OPQ4,IVF4,PQ4x4"])
def test_remove_and_compact_work_for_every_index_type(env, tmp_path, factory):
    """Tombstones: removal needs nothing from the index, for the exact, graph, inverted-file and quantized kinds
    the `auto` rule may choose (deepmetric.index.auto.KINDS); compaction reads the vectors back (decoded for
    SQ/PQ) into one index of the same factory."""
    tmp, root, _, new = env
    per_class = 44 if factory.startswith("OPQ") else 6  # OPQ trains 256 centroids per sub-vector
    src = make_bundle(tmp_path / "b", tmp_path / "d", make_dataset(tmp_path / "d", per_class=per_class), onnx_model(),
                      index={"factory": factory})
    n = 6 * per_class
    v1, v2, v3 = tmp_path / "v1", tmp_path / "v2", tmp_path / "v3"
    update_gallery(src, v1, remove=[0, 5], add=[NewItem(str(new / "n0.png"), 7)])
    update_gallery(v1, v2, remove=[n])
    b = load_bundle(v2)
    assert b.gallery_size == n - 2 and b.manifest["index_factory"] == factory and len(b.segments) == 1
    q = _queries(v2, root, [tmp_path / "d" / p for p in b.ids["path"]])
    found = b.search(q, n - 2)
    assert all(not {0, 5, n} & {h["id"] for h in row} for row in found)
    compact_gallery(v2, v3)
    c = load_bundle(v3)
    assert c.gallery_size == n - 2 and not c.segments and c.ids["id"].tolist() == b.ids["id"].tolist()
    import faiss

    assert type(faiss.downcast_index(c.index)) is type(faiss.downcast_index(b.index))
    exact = factory in ("Flat", "HNSW8", "IVF4,Flat")
    top_b = [row[0]["id"] for row in b.search(q, 1)]
    top_c = [row[0]["id"] for row in c.search(q, 1)]
    if exact:
        assert top_c == top_b == b.ids["id"].tolist()
    else:  # re-encoded decoded vectors: the codes hardly change, nor what the searches find
        assert np.mean(np.array(top_c) == np.array(top_b)) >= 0.8


def test_updates_compact_by_themselves_past_the_policy(env, tmp_path):
    tmp, root, src, new = env
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    out = update_gallery(src, v1, add=[NewItem(str(new / "n0.png"), 7)], compaction=CompactionPolicy(share=0.01))
    assert out["compacted"] and out["segments"] == 0 and load_bundle(v1).gallery_size == 37
    assert (v1 / "index.faiss").stat().st_ino != (src / "index.faiss").stat().st_ino
    policy = CompactionPolicy(share=10.0, max_segments=1)
    assert not update_gallery(v1, v2, add=[NewItem(str(new / "n1.png"), 7)], compaction=policy)["compacted"]
    out = update_gallery(v2, v2, add=[NewItem(str(new / "n2.png"), 7)], remove=[3], compaction=policy)
    assert out["compacted"] and out["added_ids"] == [38] and load_bundle(v2).ids["id"].iloc[-3:].tolist() == [36, 37, 38]
    assert 3 not in set(load_bundle(v2).ids["id"]) and not load_bundle(v2).segments
    assert not update_gallery(v2, tmp_path / "v3", remove=[4], compaction=None)["compacted"]
    with pytest.raises(GalleryError, match="nothing to compact"):
        compact_gallery(v2, tmp_path / "v4")
    with pytest.raises(GalleryError, match="share must be > 0"):
        CompactionPolicy(share=0)


def test_a_segment_or_tombstone_file_altered_or_missing_is_refused_naming_it(env, tmp_path):
    tmp, root, src, new = env
    v = tmp_path / "v"
    update_gallery(src, v, add=[NewItem(str(new / "n0.png"), 7)], remove=[1])
    for name in ("segment-00001.faiss", "segment-00001.parquet", "tombstones.parquet"):
        copy = tmp_path / f"c-{name}"
        shutil.copytree(v, copy)
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (copy / name).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{name}: sha256 .* does not match"):
            load_bundle(copy)
        (copy / name).unlink()
        with pytest.raises(BundleError, match=f"{name}: missing in"):
            load_bundle(copy)


def test_the_duplicate_check_of_a_flat_gallery_finds_what_a_search_finds(env, tmp_path):
    """The windowed comparison of an exact gallery (no full search) against the search path, on a gallery with a
    segment and a removed item: gallery vectors (themselves duplicates), vectors a hair away (still the same
    image) and farther (not), random ones."""
    from deepmetric.bundle.gallery import _duplicates

    tmp, root, src, new = env
    update_gallery(src, tmp_path / "v", add=[NewItem(str(new / "n0.png"), 7), NewItem(str(new / "n1.png"), 7)],
                   remove=[4])
    b = load_bundle(tmp_path / "v")
    own = b.vectors(np.arange(len(b.rows)))
    rng = np.random.default_rng(0)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    near = unit(own + 2e-4 * rng.normal(size=own.shape))  # cosine ~1 - 3e-7: the same image
    far = unit(own + 1e-2 * rng.normal(size=own.shape))
    vectors = np.concatenate([own, near, far, unit(rng.normal(size=(10, b.dim)))])
    items = [NewItem(f"q{i}.png", 0) for i in range(len(vectors))]
    fast = _duplicates(b, items, vectors, {7})
    b.manifest["normalized"] = False  # the search path
    slow = _duplicates(b, items, vectors, {7})
    assert fast == slow
    got = {d["image"]: d.get("same_as_id") for d in fast}
    n = len(own)
    assert {f"q{i}.png" for i in range(n) if b.rows["id"].iat[i] not in (4, 7)} <= set(got)
    assert not any(got.get(f"q{i}.png") in (4, 7) for i in range(len(vectors)))
    assert all(got.get(f"q{n + i}.png") == b.rows["id"].iat[i] for i in range(n) if b.rows["id"].iat[i] not in (4, 7))
    assert not {f"q{i}.png" for i in range(2 * n, 3 * n + 10)} & set(got)  # cosine ~1 - 1e-3 and below: new
