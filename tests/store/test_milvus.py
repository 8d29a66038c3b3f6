"""A bundle's gallery in Milvus (milvus-lite, real gRPC): export, the same neighbours as the bundle's faiss index,
the check against the served bundle, upserts and deletes with stable ids, and outages (unreachable at start, a
store that goes away and comes back)."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.bundle import load_bundle
from deepmetric.store.milvus import GalleryStore, StoreError, export_gallery
from tests.deploy_fixtures import make_bundle, onnx_model
from tests.fixtures import free_port
from tests.store_fixtures import MilvusLiteServer


@pytest.fixture(scope="module")
def bundles(deploy_bundle, deploy_data):
    """The session's Flat bundle and HNSW and IVF bundles of the same gallery (searched exhaustively), loaded."""
    tmp, root, manifest = deploy_data
    hnsw = make_bundle(tmp / "bundle_hnsw_store", root, manifest, onnx_model(),
                       index={"factory": "HNSW8", "search": {"efSearch": 40}})
    # nprobe 64: every list on both sides (faiss caps it at nlist 4; milvus-lite 3.2.2 was seen clustering a
    # 36-row segment into 36 lists whatever nlist was asked, so nprobe 4 there misses neighbours)
    ivf = make_bundle(tmp / "bundle_ivf_store", root, manifest, onnx_model(),
                      index={"factory": "IVF4,Flat", "search": {"nprobe": 64}})
    return {"flat": load_bundle(deploy_bundle[0]), "hnsw": load_bundle(hnsw), "ivf": load_bundle(ivf)}


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    """A milvus-lite server process for the module (its own data folder)."""
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus") / "data.db").start()
    yield server
    server.stop()


def _queries(bundle, n_random: int = 12) -> np.ndarray:
    """Every gallery vector and a few random unit vectors."""
    own = bundle.index.reconstruct_n(0, bundle.gallery_size)
    rnd = np.random.default_rng(3).normal(size=(n_random, bundle.dim)).astype(np.float32)
    return np.concatenate([own, rnd / np.linalg.norm(rnd, axis=1, keepdims=True)])


@pytest.mark.parametrize("kind, index_type", [("flat", "FLAT"), ("hnsw", "HNSW"), ("ivf", "IVF_FLAT")])
def test_an_exported_gallery_answers_like_the_bundle(bundles, milvus, kind, index_type):
    bundle = bundles[kind]
    summary = export_gallery(bundle, milvus.uri, f"g_{kind}")
    assert summary["items"] == bundle.gallery_size and summary["index"]["index_type"] == index_type
    assert summary["manifest_sha256"] == bundle.manifest["manifest_sha256"]
    store = GalleryStore(milvus.uri, f"g_{kind}")
    try:
        info = store.check(bundle.manifest)
        assert info["items"] == bundle.gallery_size and info["dim"] == str(bundle.dim)
        assert info["model_version"] == str(bundle.manifest["model_version"])
        q, k = _queries(bundle), 5
        got, want = store.search(q, k), bundle.search(q, k)
        assert [[h["id"] for h in row] for row in got] == [[h["id"] for h in row] for row in want]
        for g, w in zip(got, want):
            assert [(h["label"], h["class_name"], h["path"]) for h in g] == \
                   [(h["label"], h["class_name"], h["path"]) for h in w]
            np.testing.assert_allclose([h["score"] for h in g], [h["score"] for h in w], atol=1e-4)
    finally:
        store.close()


def test_re_export_is_refused_without_replace_and_switches_atomically_with_it(bundles, milvus):
    flat, hnsw = bundles["flat"], bundles["hnsw"]
    first = export_gallery(flat, milvus.uri, "g_swap")
    with pytest.raises(StoreError, match="already exists .* give --replace") as e:
        export_gallery(hnsw, milvus.uri, "g_swap")
    assert e.value.exit_code == 3
    store = GalleryStore(milvus.uri, "g_swap")
    try:
        store.check(flat.manifest)  # unchanged: still the first export
        second = export_gallery(hnsw, milvus.uri, "g_swap", replace=True)
        assert second["replaced"] == first["physical_collection"]
        # the old collection is gone, the alias now names the new one, built for the other bundle
        assert first["physical_collection"] not in store.client.list_collections()
        with pytest.raises(StoreError, match="exported from bundle manifest") as e:
            store.check(flat.manifest)
        assert e.value.exit_code == 2
        assert store.check(hnsw.manifest)["items"] == hnsw.gallery_size
    finally:
        store.close()


def test_export_leaves_what_it_did_not_write_alone(bundles, milvus):
    store = GalleryStore(milvus.uri, "g_probe")
    try:
        c = store.client
        c.create_collection("foreign", dimension=4)
        c.create_collection("foreign_two", dimension=4)
        c.create_alias("foreign_two", "foreign_alias")
        for name, words in [("foreign", "did not export \\(not an alias\\)"),
                            ("foreign_alias", "names collection 'foreign_two', which deepmetric did not export")]:
            with pytest.raises(StoreError, match=words):
                export_gallery(bundles["flat"], milvus.uri, name, replace=True)
        assert {"foreign", "foreign_two"} <= set(c.list_collections())
        assert c.describe_alias("foreign_alias")["collection_name"] == "foreign_two"
    finally:
        store.close()


def test_a_collection_of_another_bundle_or_dimension_is_refused(bundles, milvus):
    bundle = bundles["flat"]
    export_gallery(bundle, milvus.uri, "g_check")
    store = GalleryStore(milvus.uri, "g_check")
    m = bundle.manifest
    try:
        with pytest.raises(StoreError, match=f"holds {bundle.dim}-d vectors; the bundle's model gives 8-d"):
            store.check({**m, "embedding_dim": 8})
        with pytest.raises(StoreError, match=f"exported from bundle manifest {m['manifest_sha256'][:12]}"):
            store.check({**m, "manifest_sha256": "f" * 64})
        missing = GalleryStore(milvus.uri, "g_nothing")
        with pytest.raises(StoreError, match="no collection 'g_nothing'.*gallery export") as e:
            missing.check(m)
        assert e.value.exit_code == 3
        missing.close()
    finally:
        store.close()
    with pytest.raises(StoreError, match="not valid"):
        GalleryStore(milvus.uri, "bad-name")


def test_adds_get_fresh_ids_and_an_id_is_removed_once(bundles, milvus):
    bundle = bundles["flat"]
    export_gallery(bundle, milvus.uri, "g_edit")
    store = GalleryStore(milvus.uri, "g_edit")
    try:
        store.check(bundle.manifest)
        n = bundle.gallery_size
        v = bundle.index.reconstruct_n(0, 2)
        assert store.add([7, 7], ["class_7", "class_7"], ["a.png", "b.png"], v) == [n, n + 1]
        assert store.count() == n + 2
        hit = store.search(v[:1], 2)[0]
        assert {h["id"] for h in hit} == {0, n} and {h["path"] for h in hit} == {bundle.ids["path"][0], "a.png"}
        assert store.remove([n, 0]) == [0, n]
        with pytest.raises(StoreError, match=r"no item with id 0 \(never added, or removed already\); nothing "
                                             "removed") as e:
            store.remove([0, 1])
        assert e.value.exit_code == 3 and store.existing([1]) == {1}  # id 1 was not removed either
        assert store.add([1], ["x"], ["c.png"], v[1:]) == [n + 2]  # removed ids are never given out again
        assert store.count() == n + 1
    finally:
        store.close()


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match=r"cannot reach Milvus at http://127\.0\.0\.1:\d+") as e:
        GalleryStore(f"http://127.0.0.1:{free_port()}", timeout=3)
    assert e.value.exit_code == 5
    with pytest.raises(StoreError, match="its parent folder does not exist"):
        GalleryStore(str(tmp_path / "nowhere" / "x.db"))
    with pytest.raises(StoreError, match="'milvus:19530' is neither a milvus-lite folder ending in .db nor") as e:
        GalleryStore("milvus:19530")
    assert e.value.exit_code == 3


def test_a_store_that_goes_away_fails_each_call_and_recovers_when_it_returns(bundles, tmp_path):
    bundle = bundles["flat"]
    server = MilvusLiteServer(tmp_path / "outage.db").start()
    try:
        export_gallery(bundle, server.uri, "g_outage")
        store = GalleryStore(server.uri, "g_outage", timeout=3)
        store.check(bundle.manifest)
        q = _queries(bundle, 0)[:2]
        before = store.search(q, 3)
        server.stop()
        with pytest.raises(StoreError, match=f"Milvus at {server.uri}, collection 'g_outage': search failed"):
            store.search(q, 3)
        server.start()
        # the same store object connects again (and loads the collection, which a restart left released)
        assert store.search(q, 3) == before and store.count() == bundle.gallery_size
        store.close()
    finally:
        server.stop()


def test_a_local_db_folder_holds_the_gallery_across_processes(bundles, tmp_path):
    """milvus-lite in process (a ``.db`` folder): what `gallery export --to x.db` then `serve --store x.db` use."""
    bundle = bundles["flat"]
    uri = str(tmp_path / "local.db")
    export_gallery(bundle, uri, "g_local")
    store = GalleryStore(uri, "g_local")
    try:
        assert store.check(bundle.manifest)["items"] == bundle.gallery_size
        q = _queries(bundle, 0)[:3]
        assert [[h["id"] for h in r] for r in store.search(q, 4)] == [[h["id"] for h in r] for r in bundle.search(q, 4)]
    finally:
        store.close()


def test_an_export_holds_the_live_items_of_every_segment(bundles, milvus, tmp_path):
    """A bundle with a segment and tombstones: the collection holds base + segment items less the removed ones,
    and answers like the bundle's merged search."""
    from deepmetric.bundle.gallery import NewItem, update_gallery
    from tests.deploy_fixtures import draw_image
    from tests.fixtures import png_bytes

    image = tmp_path / "n.png"
    image.write_bytes(png_bytes(draw_image(7, 50, (44, 40))))
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    update_gallery(bundles["flat"].root, v1, add=[NewItem(str(image), 7)])
    update_gallery(v1, v2, remove=[0, 4])
    bundle = load_bundle(v2)
    assert bundle.segments and len(bundle.removed) == 2 and bundle.gallery_size == 35
    summary = export_gallery(bundle, milvus.uri, "g_segments")
    assert summary["items"] == 35
    store = GalleryStore(milvus.uri, "g_segments")
    try:
        assert store.count() == 35
        q = np.concatenate([bundle.vectors(np.arange(len(bundle.rows))), _queries(bundle, 4)[-4:]])
        got, want = store.search(q, 5), bundle.search(q, 5)
        assert [[h["id"] for h in row] for row in got] == [[h["id"] for h in row] for row in want]
        assert not {0, 4} & {h["id"] for row in got for h in row}
    finally:
        store.close()
