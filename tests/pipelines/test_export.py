"""`kedro run --pipelines export` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pytest

from deepmetric.io.datasets import ParquetDataset
from tests.deploy_fixtures import data_params, model_params, write_stage_inputs
from tests.fixtures import STRICT_LIMITS, file_tree, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


@pytest.fixture()
def work(tmp_path):
    root, _ = write_stage_inputs(tmp_path, model=True)
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
    # The same inputs give the same model.onnx and export.json (DVC hashes them); the timings go beside (issue 23).
    outputs = file_tree(tmp / "data/06_models/model.onnx", tmp / "data/08_reporting/export.json")
    run_stage("export", tmp, _params(root))
    assert file_tree(tmp / "data/06_models/model.onnx", tmp / "data/08_reporting/export.json") == outputs
    timings = json.loads((tmp / "data/08_reporting/timings/export.json").read_text())
    assert set(timings) == {"export_seconds", "seconds_pytorch", "seconds_onnxruntime"} and not set(timings) & set(report)



@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_the_data_limits_reach_the_parity_decode(work, limit):
    """The parity check decodes the test images under data.max_pixels / data.max_aspect_ratio: set stricter
    than their defaults, they refuse an image the defaults accept, naming it and the parameter; no model.onnx."""
    tmp, root = work
    strict, size, words = STRICT_LIMITS[limit]
    manifest = ParquetDataset(str(tmp / "data/02_intermediate/manifest_validated.parquet")).load()
    victim = manifest[manifest["split"] == "test"]["path"].iloc[4]
    plant_image(root / victim, size)
    params = _params(root)
    params["data"].update(strict)
    with pytest.raises(Exception) as e:
        run_stage("export", tmp, params)
    assert victim in str(e.value) and words in str(e.value)
    assert not (tmp / "data/06_models/model.onnx").exists()

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


def test_int8_export_then_index_and_bundle_record_it(work):
    """export.precision: int8 → model.onnx is the quantized graph (a quarter of the size), export.json carries
    the int8-vs-fp32 report, and the index + bundle stages take it unchanged; the bundle says which model it
    carries and serves it with the same code. (The model is untrained, so the accuracy limits are opened here;
    the limits themselves are tested below.)"""
    from deepmetric.export.onnx_export import read_metadata
    from deepmetric.bundle import load_bundle

    tmp, root = work
    int8 = {"mode": "static", "calibration_images": 8, "timing_repeats": 2, "max_map_drop": 1.0, "max_recall_drop": 1.0}
    params = {**_params(root, precision="int8", int8=int8), "index": load_params("index")["index"],
              "bundle": {**load_params("bundle")["bundle"], "thumbnails": {"enabled": False}}}
    run_stage("export", tmp, params)
    report = json.loads((tmp / "data/08_reporting/export.json").read_text())
    q = report["int8"]
    assert report["precision"] == "int8" and q["passed"] and q["mode"] == "static" and q["images"] == 36
    assert q["size_ratio"] < 0.35 and q["cosine_fp32_int8_min"] > 0.95
    assert q["bytes_int8"] == (tmp / "data/06_models/model.onnx").stat().st_size
    timings = json.loads((tmp / "data/08_reporting/timings/export.json").read_text())  # not in the report (issue 23)
    assert set(timings["int8"]["latency_b1_ms"]) == {"fp32", "int8"} and "latency_b1_ms" not in q
    meta = read_metadata((tmp / "data/06_models/model.onnx").read_bytes())
    assert meta["precision"] == "int8" and meta["quantization"].startswith("static") and json.loads(meta["input"])["crop"] == 32
    from deepmetric.io.datasets import JSONDataset

    # What evaluate writes for these weights (the int8 model keeps the fp32 weights' fingerprint).
    JSONDataset(str(tmp / "data/08_reporting/metrics.json")).save(
        {"map@r": 0.5, "model_weights_sha256": meta["weights_sha256"]})
    run_stage("index", tmp, params)
    run_stage("bundle", tmp, params)
    b = load_bundle(tmp / "data/09_deploy/bundle")
    assert b.manifest["model_precision"] == "int8" and b.manifest["model_quantization"].startswith("static")
    assert b.gallery_size == 36 and b.dim == 16


def test_int8_accuracy_limits():
    from deepmetric.export.config import Int8Params
    from deepmetric.export.quantize import QuantizationError
    from deepmetric.export.stage import check_int8

    def report(r1, mapr):
        return {"images": 100, "fp32": {"recall@1": 0.9, "map@r": 0.6}, "int8": {"recall@1": r1, "map@r": mapr},
                "recall@1_drop_points": 100 * (0.9 - r1), "map@r_drop_points": 100 * (0.6 - mapr)}

    ok = report(0.896, 0.595)
    check_int8(ok, Int8Params(max_map_drop=0.005, max_recall_drop=0.005))
    assert ok["passed"]
    with pytest.raises(QuantizationError, match=r"map@r dropped 1.00 points \(fp32 60.00 → int8 59.00\), more than "
                                               r"export.int8.max_map_drop = 0.005"):
        check_int8(report(0.9, 0.59), Int8Params(max_map_drop=0.005))
    with pytest.raises(QuantizationError, match="recall@1 dropped"):
        check_int8(report(0.85, 0.6), Int8Params())
