"""The served version and reloads (:class:`ServingState`) in this process, on real bundles: an old version is freed
as soon as its last request is done — without the garbage collector —, every reload is logged and recorded, a
refused one with its reason. (Over HTTP and in a real server process: tests/serving/test_reload.py.)"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
import weakref

import numpy as np
import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.gallery import update_gallery
from deepmetric.serving.config import ServerSettings
from deepmetric.serving.state import ServingState


@pytest.fixture()
def versions(deploy_bundle, tmp_path):
    """``current`` → ``a``, and a second version ``b`` (one item removed): (current, a, b)."""
    a = tmp_path / "a"
    shutil.copytree(deploy_bundle[0], a)
    update_gallery(a, tmp_path / "b", remove=[1])
    current = tmp_path / "current"
    current.symlink_to("a")
    return current, a, tmp_path / "b"


def _point(link, name: str) -> None:
    tmp = link.with_name(".current.new")
    tmp.symlink_to(name)
    os.replace(tmp, link)


def _gone(ref: weakref.ref, seconds: float = 10.0) -> bool:
    """Whether ``ref``'s object is freed within ``seconds`` (an old batcher thread may still be finishing)."""
    deadline = time.monotonic() + seconds
    while ref() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return ref() is None


@pytest.mark.parametrize("batching", [True, False])
def test_an_old_version_is_freed_without_the_garbage_collector(versions, batching):
    """The reference cycle Served → DynamicBatcher(served.run) → Served kept every old model and index alive until
    a collection happened to run (issue 23: +45–50 MiB of server memory per reload)."""
    current, _, _ = versions
    state = ServingState(current, ServerSettings(batching=batching), load_bundle(current))
    gc.collect()
    gc.disable()
    try:
        old = []
        for name in ("b", "a", "b"):
            served = state.current
            old.append((weakref.ref(served), weakref.ref(served.bundle), weakref.ref(served.bundle.index)))
            del served
            _point(current, name)
            assert state.reload()["status"] == "reloaded"
        for served, bundle, index in old:
            assert _gone(served) and _gone(bundle) and _gone(index), "an old version outlived its last request"
        # A version in use by a request stays until that request is done, then goes.
        with state.use() as in_use:
            ref = weakref.ref(in_use.bundle)
            _point(current, "a")
            state.reload()
            assert ref() is not None and in_use.retired
            assert in_use.run(_query(in_use.bundle), 1)[2].shape == (1, 1)
        del in_use
        assert _gone(ref)
    finally:
        gc.enable()
        state.close()


def _query(bundle) -> np.ndarray:
    return np.zeros((1, bundle.spec.crop, bundle.spec.crop, 3), dtype=np.uint8)


def test_every_reload_is_logged_and_the_last_one_kept(versions, caplog):
    current, a, _ = versions
    state = ServingState(current, ServerSettings(batching=False), load_bundle(current))
    try:
        assert state.last_reload is None and state.refused_reloads == 0
        caplog.set_level(logging.INFO, logger="uvicorn.error")
        assert state.reload()["status"] == "unchanged"
        assert state.last_reload["status"] == "unchanged" and "unchanged" in caplog.text
        _point(current, "b")
        assert state.reload()["status"] == "reloaded"
        assert state.last_reload["status"] == "reloaded" and state.last_reload["gallery_version"] == 1
        assert f"reloaded {current}: model" in caplog.text and "gallery version 1 (35 items)" in caplog.text

        caplog.clear()
        (current.resolve() / "ids.parquet").write_bytes(b"not parquet")
        with pytest.raises(BundleError, match="ids.parquet"):
            state.reload()
        assert state.refused_reloads == 1 and state.reloads == 1
        last = state.last_reload
        assert last["status"] == "refused" and "ids.parquet" in last["error"] and last["at"].endswith("+00:00")
        [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert f"reload of {current} refused: bundle refused: ids.parquet" in record.getMessage()
        assert "still serving model" in record.getMessage() and "gallery version 1" in record.getMessage()
        assert state.current.bundle.gallery_size == 35  # the old version keeps serving

        shutil.rmtree(a)  # an unreadable folder is a refusal too, not an error of another kind
        _point(current, "a")
        with pytest.raises(BundleError):
            state.reload()
        assert state.refused_reloads == 2 and state.current.bundle.gallery_size == 35
    finally:
        state.close()


def test_with_a_gallery_store_a_reload_to_another_bundle_is_refused_and_the_store_still_serves(versions, tmp_path):
    """`serve --store`: the collection belongs to one bundle; a reload to another (here: b, one item removed, so
    another manifest) is refused naming the collection, and searches keep going to the store."""
    from deepmetric.store.milvus import GalleryStore, export_gallery

    current, a, _ = versions
    bundle = load_bundle(current)
    uri = str(tmp_path / "store.db")
    export_gallery(bundle, uri)
    store = GalleryStore(uri)
    store.check(bundle.manifest)
    state = ServingState(current, ServerSettings(batching=False), bundle, store)
    try:
        assert state.current.store is store and not state.current.searches_index
        _point(current, "b")
        with pytest.raises(BundleError, match="collection deepmetric_gallery: .*exported from bundle manifest"):
            state.reload()
        assert state.current.bundle is bundle and state.last_reload["status"] == "refused"
        q = bundle.index.reconstruct_n(0, 2)
        with state.use() as served:
            assert served.gallery_size() == bundle.gallery_size
            assert [[h["id"] for h in r] for r in served.store.search(q, 3)] == \
                   [[h["id"] for h in r] for r in bundle.search(q, 3)]
        _point(current, "a")
        assert state.reload()["status"] == "unchanged"
    finally:
        state.close()


def test_a_reload_picks_up_a_new_segment_version_without_hashing_the_shared_files(versions, tmp_path):
    """`gallery add` through the served symlink writes a version that links the base files and adds a segment: the
    reload serves it (the added image finds itself) and hashes only the new files."""
    from deepmetric.bundle.reader import read_manifest, verify_file
    from deepmetric.data.transforms import load_eval_image
    from tests.deploy_fixtures import draw_image
    from tests.fixtures import png_bytes
    from tests.server_fixtures import deepmetric

    current, a, _ = versions
    for p in a.iterdir():  # files as they sit on a host, not just written (a racy-new file is not remembered)
        os.utime(p, (time.time() - 60, time.time() - 60))
    state = ServingState(current, ServerSettings(batching=False), load_bundle(current))
    try:
        image = tmp_path / "n.png"
        image.write_bytes(png_bytes(draw_image(7, 50, (44, 40))))
        proc = deepmetric("gallery", "add", "--bundle", str(current), "--label", "7", str(image))  # another process
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["segments"] == 1 and os.readlink(current) == "a-g1"
        new = current.resolve()
        assert (new / "index.faiss").stat().st_ino == (a / "index.faiss").stat().st_ino
        files = read_manifest(a)["files"]
        assert not verify_file(new, "index.faiss", files["index.faiss"])  # remembered across the hard link
        assert not verify_file(new, "model.onnx", files["model.onnx"])
        assert state.reload()["status"] == "reloaded"
        bundle = state.current.bundle
        assert bundle.gallery_size == 37 and len(bundle.segments) == 1
        _, scores, rows = state.current.run(load_eval_image(image, bundle.spec)[None], 1)
        assert bundle.neighbours(scores, rows)[0][0]["id"] == 36
    finally:
        state.close()
