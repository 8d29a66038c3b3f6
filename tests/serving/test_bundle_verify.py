"""Bundle build and verification: checksums of every file, dimensions, refusals naming the file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from deepmetric.serving.bundle import MANIFEST_FILE, BundleError, build_bundle, load_bundle, read_manifest, sha256
from deepmetric.serving.config import BundleParams
from tests.deploy_fixtures import EMBED_DIM, evaluated, make_bundle, make_dataset, onnx_model

FILES = ["model.onnx", "index.faiss", "ids.parquet", "manifest.json", "thumbnails-00000.parquet"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle")
    root = tmp / "data"
    manifest = make_dataset(root)
    onnx_bytes = onnx_model()
    bundle = make_bundle(tmp / "bundle", root, manifest, onnx_bytes)
    return tmp, root, manifest, onnx_bytes, bundle


def test_bundle_loads_and_manifest_is_complete(built):
    *_, bundle_dir = built
    b = load_bundle(bundle_dir)
    m = b.manifest
    assert sorted(p.name for p in bundle_dir.iterdir()) == sorted(FILES)
    for name in FILES[:3] + FILES[4:]:
        assert m["files"][name] == sha256((bundle_dir / name).read_bytes())
    assert m["model_version"] == m["files"]["model.onnx"][:12] and m["index_version"] == m["files"]["index.faiss"][:12]
    assert m["embedding_dim"] == EMBED_DIM == b.dim and m["metric"] == "inner_product" and m["normalized"]
    assert m["input"]["layout"] == "NHWC" and m["input"]["crop"] == 32
    assert m["index_factory"] == "Flat" and m["gallery_size"] == b.gallery_size == 36
    assert m["accepted_on"] == {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.4}
    assert {"onnxruntime", "faiss", "onnx", "deepmetric"} <= set(m["versions"])
    ids = pd.read_parquet(bundle_dir / "ids.parquet")
    assert list(ids.columns) == ["id", "label", "class_name", "path"]


@pytest.mark.parametrize("name", FILES)
def test_one_changed_byte_in_any_file_is_refused(built, tmp_path, name):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / name).read_bytes())
    pos = len(data) // 2
    data[pos] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(copy)
    assert err.value.file == name, str(err.value)
    if name != "model.onnx":
        return
    # The CLI refuses such a bundle with the message and a non-zero exit status (once: it is slow to start).
    proc = subprocess.run([sys.executable, "-m", "deepmetric.serving.cli", "info", "--bundle", str(copy)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and name in proc.stderr and "bundle refused" in proc.stderr


def test_missing_file_and_not_a_bundle(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "index.faiss").unlink()
    with pytest.raises(BundleError, match="index.faiss: missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nope")


def _rewrite_manifest(folder, **changes):
    import deepmetric.serving.bundle as B

    m = json.loads((folder / MANIFEST_FILE).read_text())
    m.update(changes)
    thumbs = tuple(m["thumbnails"]["files"]) if m.get("thumbnails") else ()
    m["files"] = {n: sha256((folder / n).read_bytes()) for n in B.PAYLOAD_FILES + thumbs}
    m["manifest_sha256"] = sha256(B._canonical(m))
    (folder / MANIFEST_FILE).write_text(json.dumps(m))


def test_model_and_index_dimension_mismatch_is_refused(built, tmp_path):
    """A consistently re-signed bundle whose model (dim 8) does not fit its index (dim 16)."""
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "model.onnx").write_bytes(onnx_model(8))
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match="model.onnx: model output dimension 8 != index dimension 16"):
        load_bundle(copy)
    _rewrite_manifest(copy, embedding_dim=8)
    with pytest.raises(BundleError, match="dimension"):
        load_bundle(copy)


def test_gallery_size_mismatch_is_refused(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    ids = pd.read_parquet(copy / "ids.parquet").iloc[:-1]
    ids.to_parquet(copy / "ids.parquet", index=False)
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match="ids.parquet: 35 ids, index holds 36"):
        load_bundle(copy)


def test_build_refuses_mismatches_and_unaccepted_models(built):
    from deepmetric.index.config import IndexParams
    from deepmetric.index.gallery import build_gallery_index

    tmp, root, manifest, onnx_bytes, bundle_dir = built
    index_bytes, ids, report = build_gallery_index(onnx_bytes, manifest, root, IndexParams())
    metrics = evaluated(onnx_bytes, {"map@r": 0.3, "recall@1": 0.9, "best_epoch": 3, "note": "text is skipped"})
    kw = {"index_report": report}
    with pytest.raises(BundleError, match="map@r = 0.3000 < 0.5"):
        build_bundle(onnx_bytes, index_bytes, ids, metrics, BundleParams(require={"map@r": 0.5}), **kw)
    with pytest.raises(BundleError, match="lacks"):
        build_bundle(onnx_bytes, index_bytes, ids, metrics, BundleParams(require={"nmi": 0.1}), **kw)
    with pytest.raises(BundleError, match="36 index vectors"):
        build_bundle(onnx_bytes, index_bytes, ids.iloc[:10], metrics, BundleParams(), **kw)
    with pytest.raises(BundleError, match="dimension 8 != index dimension 16"):
        build_bundle(onnx_model(8), index_bytes, ids, metrics, BundleParams(), **kw)
    files = build_bundle(onnx_bytes, index_bytes, ids, metrics, BundleParams(accepted_on=["map@r"], release="r1"),
                         image_root=str(root), **kw)
    m = json.loads(files["manifest.json"])
    assert m["accepted_on"] == {"map@r": 0.3} and m["release"] == "r1"
    assert m["lineage"]["index_model_sha256"] == m["files"]["model.onnx"] == sha256(onnx_bytes)
    assert m["lineage"]["metrics_weights_sha256"] == m["lineage"]["weights_sha256"] == metrics["model_weights_sha256"]
    assert m["lineage"]["data_version"] == report["data_version"] and len(report["data_version"]) == 64


def test_build_refuses_a_new_model_with_an_old_index_or_old_metrics(built):
    """The issue's case: retrain + export, but no index (or evaluate) rerun: the bundle stage must refuse."""
    import functools

    from deepmetric.serving.config import BundleParams as BaseParams
    from deepmetric.index.config import IndexParams
    from deepmetric.index.gallery import build_gallery_index

    tmp, root, manifest, old_onnx, bundle_dir = built
    BundleParams = functools.partial(BaseParams, thumbnails={"enabled": False})  # noqa: N806
    new_onnx = onnx_model(seed=1)  # same architecture and dimension, other weights
    old_index, ids, old_report = build_gallery_index(old_onnx, manifest, root, IndexParams())
    with pytest.raises(BundleError, match=r"index.faiss: the gallery was embedded by model \w{12}, but the packaged "
                                          r"model.onnx is \w{12}: the index is stale, rerun the index stage"):
        build_bundle(new_onnx, old_index, ids, evaluated(new_onnx), BundleParams(), index_report=old_report)
    new_index, ids, new_report = build_gallery_index(new_onnx, manifest, root, IndexParams())
    with pytest.raises(BundleError, match="metrics.json: are the metrics of weights .* rerun the evaluate stage"):
        build_bundle(new_onnx, new_index, ids, evaluated(old_onnx), BundleParams(), index_report=new_report)
    with pytest.raises(BundleError, match="metrics.json: does not say which model"):
        build_bundle(new_onnx, new_index, ids, {"map@r": 0.5}, BundleParams(), index_report=new_report)
    with pytest.raises(BundleError, match="index.json: describes index"):
        build_bundle(new_onnx, old_index, ids, evaluated(new_onnx), BundleParams(), index_report=new_report)
    with pytest.raises(BundleError, match="index.json: does not say which model"):
        build_bundle(new_onnx, new_index, ids, evaluated(new_onnx), BundleParams(), index_report={})
    build_bundle(new_onnx, new_index, ids, evaluated(new_onnx), BundleParams(), index_report=new_report)


def test_load_refuses_a_swapped_model_or_foreign_metrics(built, tmp_path):
    """A consistently re-signed bundle with another model of the same dimension: the lineage says the index was
    built by the old one, and `info` refuses it."""
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    (copy / "model.onnx").write_bytes(onnx_model(seed=1))
    _rewrite_manifest(copy)
    with pytest.raises(BundleError, match=r"index.faiss: was built by model \w{12}, but the bundle's model.onnx is"):
        load_bundle(copy)
    shutil.rmtree(copy)
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / MANIFEST_FILE).read_text())
    _rewrite_manifest(copy, lineage={**m["lineage"], "metrics_weights_sha256": "0" * 64})
    with pytest.raises(BundleError, match="manifest.json: accepted_on holds the metrics of weights 000000000000"):
        load_bundle(copy)
    _rewrite_manifest(copy, lineage=None)
    with pytest.raises(BundleError, match="has no 'lineage'"):
        load_bundle(copy)


def test_read_manifest_rejects_edits(built, tmp_path):
    *_, bundle_dir = built
    copy = tmp_path / "b"
    shutil.copytree(bundle_dir, copy)
    m = json.loads((copy / MANIFEST_FILE).read_text())
    m["gallery_size"] = 999
    (copy / MANIFEST_FILE).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="manifest_sha256"):
        read_manifest(copy)
