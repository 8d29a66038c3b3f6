"""`kedro run --pipeline export` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pytest

from deepmetric.io.datasets import ParquetDataset, TorchDataset
from tests.deploy_fixtures import data_params, make_dataset, make_model_payload, model_params
from tests.pipelines.kedro_helpers import load_params, run_stage


@pytest.fixture()
def work(tmp_path):
    root = tmp_path / "dataset"
    manifest = make_dataset(root)
    ParquetDataset(str(tmp_path / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    TorchDataset(str(tmp_path / "data/06_models/model.pt")).save(make_model_payload())
    return tmp_path, root


def _params(root, **export):
    base = load_params("export")["export"]
    return {"data": data_params(root), "model": model_params(), "export": {**base, "exporter": "torchscript", **export}}


def test_export_stage_writes_model_and_report(work):
    tmp, root = work
    run_stage("export", tmp, _params(root))
    report = json.loads((tmp / "data/08_reporting/export.json").read_text())
    assert report["passed"] and report["max_abs_diff"] < 1e-4 and report["exporter"] == "torchscript"
    assert report["recall@1_onnx"] == pytest.approx(report["recall@1_pytorch"])
    assert (tmp / "data/06_models/model.onnx").stat().st_size == report["onnx_bytes"]
    assert not list((tmp / "data/06_models").glob("*.data")), "model.onnx must be self-contained"


def test_default_parameter_file_is_valid():
    from deepmetric.data.config import parse_params
    from deepmetric.export.config import ExportParams

    assert parse_params(ExportParams, load_params("export")["export"], "export").exporter == "dynamo"


def test_wrong_key_fails_naming_it_and_writes_nothing(work):
    tmp, root = work
    with pytest.raises(Exception, match="export.tolerence"):
        run_stage("export", tmp, _params(root, tolerence=0.1))
    assert not (tmp / "data/06_models/model.onnx").exists()


def test_parity_failure_leaves_no_artefact(work):
    tmp, root = work
    with pytest.raises(Exception, match="parity check failed"):
        run_stage("export", tmp, _params(root, tolerance=1e-12))
    assert not (tmp / "data/06_models/model.onnx").exists()
    assert not (tmp / "data/08_reporting/export.json").exists()


def test_model_params_must_match_the_model_file(work):
    tmp, root = work
    p = _params(root)
    p["model"] = {**p["model"], "crop": 24}
    with pytest.raises(Exception, match="model.crop"):
        run_stage("export", tmp, p)
