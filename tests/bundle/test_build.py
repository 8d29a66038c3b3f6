"""Building a bundle (`build_bundle`, the `bundle` stage's code): the artefacts must belong together (the index
embedded by this model, the report of this index, the metrics of these weights) and pass the `bundle.require` gate;
refusals name the stale file and the stage to rerun."""

from __future__ import annotations

import json

import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.build import build_bundle
from deepmetric.bundle.config import BundleParams
from deepmetric.bundle.format import sha256
from deepmetric.index.config import IndexParams
from deepmetric.index.gallery import build_gallery_index
from deepmetric.io.datasets import FileTreeDataset
from tests.deploy_fixtures import evaluated, onnx_model


@pytest.fixture(scope="module")
def built(deploy_data, deploy_bundle):
    """The session's default dataset and bundle (tests/conftest.py; only read)."""
    tmp, root, manifest = deploy_data
    return tmp, root, manifest, onnx_model(), deploy_bundle[0]


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

    from deepmetric.bundle.config import BundleParams as BaseParams
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


def test_built_files_are_the_declared_ones_and_load(built, tmp_path):
    """What the stage hands the catalog: exactly the files the manifest declares plus manifest.json, the manifest
    sealed over them (sha256 and size of each) — written as the catalog writes it, it loads."""
    from deepmetric.bundle.format import MANIFEST_FILE, declared_files, manifest_sha256

    tmp, root, manifest, onnx_bytes, _ = built
    index_bytes, ids, report = build_gallery_index(onnx_bytes, manifest, root, IndexParams())
    files = build_bundle(onnx_bytes, index_bytes, ids, evaluated(onnx_bytes),
                         BundleParams(thumbnails={"shard_items": 20}), index_report=report, image_root=str(root),
                         created="2026-01-02T03:04:05+00:00")
    m = json.loads(files[MANIFEST_FILE])
    assert sorted(files) == sorted([*declared_files(m), MANIFEST_FILE])
    assert m["thumbnails"]["files"] == ["thumbnails-00000.parquet", "thumbnails-00001.parquet"]
    assert m["files"] == {n: sha256(files[n]) for n in declared_files(m)}
    assert m["sizes"] == {n: len(files[n]) for n in declared_files(m)}
    assert m["manifest_sha256"] == manifest_sha256(m) and m["created"] == "2026-01-02T03:04:05+00:00"
    FileTreeDataset(str(tmp_path / "b")).save(files)
    assert load_bundle(tmp_path / "b").manifest == m


def test_thresholds_are_checked_copied_in_and_recorded(built, tmp_path):
    """The evaluate stage's thresholds.json goes into the bundle as a checksummed file the manifest declares; the
    loaded bundle picks operating points from it. A bad file is refused at build, naming it; none: no entry."""
    from deepmetric.bundle.format import THRESHOLDS_FILE, declared_files
    from deepmetric.bundle.thresholds import parse_thresholds
    from tests.deploy_fixtures import THRESHOLDS

    tmp, root, manifest, onnx_bytes, _ = built
    index_bytes, ids, report = build_gallery_index(onnx_bytes, manifest, root, IndexParams())
    params = BundleParams(thumbnails={"enabled": False})
    args = (onnx_bytes, index_bytes, ids, evaluated(onnx_bytes), params)
    files = build_bundle(*args, index_report=report, thresholds=THRESHOLDS)
    m = json.loads(files["manifest.json"])
    assert m["thresholds"] == {"file": THRESHOLDS_FILE} and THRESHOLDS_FILE in declared_files(m)
    assert json.loads(files[THRESHOLDS_FILE]) == THRESHOLDS
    assert m["files"][THRESHOLDS_FILE] == sha256(files[THRESHOLDS_FILE])
    FileTreeDataset(str(tmp_path / "b")).save(files)
    b = load_bundle(tmp_path / "b")
    assert b.thresholds == parse_thresholds(THRESHOLDS)
    assert b.operating_point(None) == {"fmr": 0.01, "threshold": 0.6132}
    assert b.operating_point(0.001) == {"fmr": 0.001, "threshold": 0.7421}

    without = json.loads(build_bundle(*args, index_report=report)["manifest.json"])
    assert without["thresholds"] is None and THRESHOLDS_FILE not in without["files"]
    bad = {**THRESHOLDS, "default_fmr": 0.2}
    with pytest.raises(BundleError, match=r"thresholds.json: default_fmr 0.2 is not one of the operating points"):
        build_bundle(*args, index_report=report, thresholds=bad)
