"""`kedro run --pipelines bundle` (after export → index) against the real catalog and parameter files; the
bundle it writes is served by `load_bundle`."""

from __future__ import annotations

import json

import pytest

from deepmetric.io.datasets import JSONDataset, ParquetDataset, TorchDataset
from deepmetric.bundle import load_bundle
from deepmetric.training.model_io import weights_sha256
from deepmetric.runtime import source_timestamp
from tests.deploy_fixtures import data_params, make_dataset, make_model_payload, model_params
from tests.fixtures import file_tree
from tests.pipelines.kedro_helpers import load_params, run_stage

METRICS = {"recall@1": 0.81, "recall@2": 0.9, "map@r": 0.42, "nmi": 0.6, "best_epoch": 2}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle_stage")
    root = tmp / "dataset"
    ParquetDataset(str(tmp / "data/02_intermediate/manifest_validated.parquet")).save(make_dataset(root))
    payload = make_model_payload()
    TorchDataset(str(tmp / "data/06_models/model.pt")).save(payload)
    # What the evaluate stage writes for this model (its figures + which weights they belong to).
    JSONDataset(str(tmp / "data/08_reporting/metrics.json")).save(
        {**METRICS, "model_weights_sha256": weights_sha256(payload["state_dict"])})
    params = {"data": data_params(root), "model": model_params(),
              "export": {**load_params("export")["export"], "exporter": "torchscript"},
              "index": {**load_params("index")["index"], "factory": "HNSW8"},
              "bundle": load_params("bundle")["bundle"]}
    run_stage("export", tmp, params)
    run_stage("index", tmp, params)
    return tmp, params


def test_export_index_bundle_chain(work):
    tmp, params = work
    run_stage("bundle", tmp, params)
    folder = tmp / "data/09_deploy/bundle"
    b = load_bundle(folder)
    m = b.manifest
    assert sorted(p.name for p in folder.iterdir()) == ["ids.parquet", "index.faiss", "manifest.json", "model.onnx",
                                                         "thumbnails-00000.parquet"]
    assert m["thumbnails"]["count"] == b.gallery_size and m["thumbnails"]["format"] == "webp"
    assert m["files"]["model.onnx"] == __import__("hashlib").sha256((tmp / "data/06_models/model.onnx").read_bytes()).hexdigest()
    assert m["index_factory"] == "HNSW8" and m["dataset"] == "glyphs" and m["method"] == "margin"
    assert m["accepted_on"] == {k: float(v) for k, v in METRICS.items()}
    assert m["lineage"]["index_model_sha256"] == m["files"]["model.onnx"]
    assert m["gallery_size"] == b.gallery_size and m["embedding_dim"] == b.dim == 16
    assert m["index_report"]["recall@1_vs_exact"] == json.loads((tmp / "data/08_reporting/index.json").read_text())["recall@1_vs_exact"]
    # `created` is the source date (the commit date of HEAD here), so the same inputs give the same bundle, byte
    # for byte: DVC sees no change, and a release of it has the same hash (issue 23).
    assert m["created"] == source_timestamp()
    before = file_tree(folder)
    run_stage("bundle", tmp, params)
    assert file_tree(folder) == before


def test_default_parameter_file_is_valid():
    from deepmetric.data.config import parse_params
    from deepmetric.bundle.config import BundleParams

    assert parse_params(BundleParams, load_params("bundle")["bundle"], "bundle").require == {}


def test_gate_and_wrong_key_fail_and_keep_the_previous_bundle(work):
    tmp, params = work
    run_stage("bundle", tmp, params)
    before = (tmp / "data/09_deploy/bundle/manifest.json").read_bytes()
    with pytest.raises(Exception, match="bundle.requires"):
        run_stage("bundle", tmp, {**params, "bundle": {"requires": {"map@r": 0.9}}})
    with pytest.raises(Exception, match=r"model not accepted: map@r = 0.4200 < 0.9"):
        run_stage("bundle", tmp, {**params, "bundle": {"require": {"map@r": 0.9}}})
    assert (tmp / "data/09_deploy/bundle/manifest.json").read_bytes() == before
    assert not [p for p in (tmp / "data/09_deploy").iterdir() if p.name != "bundle"], "no temporary left behind"


def test_new_model_with_the_old_index_or_old_metrics_is_refused(work, tmp_path):
    """train → export → bundle without rerunning index/evaluate (the issue's sequence) is refused, naming the
    stale artefact; the previous bundle stays."""
    import shutil

    tmp0, params = work
    tmp = tmp_path / "w"
    shutil.copytree(tmp0, tmp)
    run_stage("bundle", tmp, params)
    before = (tmp / "data/09_deploy/bundle/manifest.json").read_bytes()
    payload = make_model_payload(seed=1)
    TorchDataset(str(tmp / "data/06_models/model.pt")).save(payload)
    run_stage("export", tmp, params)
    with pytest.raises(Exception, match="index.faiss: the gallery was embedded by model .* rerun the index stage"):
        run_stage("bundle", tmp, params)
    run_stage("index", tmp, params)
    with pytest.raises(Exception, match="metrics.json: are the metrics of weights .* rerun the evaluate stage"):
        run_stage("bundle", tmp, params)
    assert (tmp / "data/09_deploy/bundle/manifest.json").read_bytes() == before
    JSONDataset(str(tmp / "data/08_reporting/metrics.json")).save(
        {**METRICS, "map@r": 0.5, "model_weights_sha256": weights_sha256(payload["state_dict"])})
    run_stage("bundle", tmp, params)
    m = load_bundle(tmp / "data/09_deploy/bundle").manifest
    assert m["accepted_on"]["map@r"] == 0.5
    assert m["lineage"]["weights_sha256"] == weights_sha256(payload["state_dict"])


def test_the_stage_carries_the_evaluate_stages_thresholds(work):
    """thresholds.json at its catalog path goes into the bundle (absent, as in the tests above: a bundle without
    it); a bad one stops the stage naming it and keeps the previous bundle."""
    from tests.deploy_fixtures import THRESHOLDS

    tmp, params = work
    path = tmp / "data/08_reporting/thresholds.json"
    JSONDataset(str(path)).save(THRESHOLDS)
    try:
        run_stage("bundle", tmp, params)
        folder = tmp / "data/09_deploy/bundle"
        b = load_bundle(folder)
        assert (folder / "thresholds.json").read_bytes() == path.read_bytes()
        assert b.manifest["thresholds"] == {"file": "thresholds.json"} and b.thresholds.default_fmr == 0.01
        before = (folder / "manifest.json").read_bytes()
        JSONDataset(str(path)).save({**THRESHOLDS, "score": "l2"})
        with pytest.raises(Exception, match="thresholds.json: score is 'l2'"):
            run_stage("bundle", tmp, params)
        assert (folder / "manifest.json").read_bytes() == before
    finally:
        path.unlink()
