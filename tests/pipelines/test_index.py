"""`kedro run --pipelines index` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from deepmetric.index.build import deserialize_index
from tests.deploy_fixtures import data_params, model_params, write_stage_inputs
from tests.fixtures import STRICT_LIMITS, file_tree, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index_stage")
    root, manifest = write_stage_inputs(tmp, onnx=True)
    return tmp, root, manifest


def _params(root, **index):
    return {"data": data_params(root), "model": model_params(), "index": {**load_params("index")["index"], **index}}


@pytest.mark.parametrize("factory,search", [("Flat", {}), ("HNSW8", {"efSearch": 16}), ("IVF2,Flat", {"nprobe": 2})])
def test_index_stage(work, factory, search):
    tmp, root, manifest = work
    run_stage("index", tmp, _params(root, factory=factory, search=search))
    report = json.loads((tmp / "data/08_reporting/index.json").read_text())
    ids = pd.read_parquet(tmp / "data/07_model_output/ids.parquet")
    index = deserialize_index((tmp / "data/07_model_output/index.faiss").read_bytes())
    n = int((manifest["split"] == "test").sum())
    assert index.ntotal == len(ids) == report["gallery_size"] == n
    assert report["factory"] == factory and report["search_params"] == search
    assert {"recall@1_vs_exact", "recall@10_vs_exact", "class_recall@1"} <= set(report)
    # the timings are not in the report (a DVC output: same inputs, same bytes) but beside it (issue 23)
    timings = json.loads((tmp / "data/08_reporting/timings/index.json").read_text())
    assert set(timings) == {"embed_seconds", "build_seconds", "latency"} and not set(timings) & set(report)
    assert timings["latency"]["index"]["single_query"]["p50_ms"] > 0
    if factory == "Flat":
        assert report["recall@1_vs_exact"] == 1.0 and report["recall@10_vs_exact"] == 1.0
    # The same inputs give the same index, ids and report, byte for byte (DVC hashes them).
    outputs = file_tree(tmp / "data/07_model_output", tmp / "data/08_reporting/index.json")
    run_stage("index", tmp, _params(root, factory=factory, search=search))
    assert file_tree(tmp / "data/07_model_output", tmp / "data/08_reporting/index.json") == outputs



@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
@pytest.mark.parametrize("processes", [1, 2])
def test_the_data_limits_reach_the_gallery_decode(tmp_path, limit, processes):
    """The gallery is decoded under data.max_pixels / data.max_aspect_ratio, in this process and in the embedding
    worker processes: set stricter than their defaults, they refuse an image the defaults accept, naming it and
    the parameter; no index is written."""
    strict, size, words = STRICT_LIMITS[limit]
    root, manifest = write_stage_inputs(tmp_path, onnx=True)
    victim = manifest[manifest["split"] == "test"]["path"].iloc[-1]  # in the last shard
    plant_image(root / victim, size)
    params = _params(root, processes=processes, batch_size=8)
    params["data"].update(strict)
    with pytest.raises(Exception) as e:
        run_stage("index", tmp_path, params)
    assert victim in str(e.value) and words in str(e.value)
    assert not (tmp_path / "data/07_model_output/index.faiss").exists()

def test_default_parameter_file_is_valid():
    from deepmetric.data.config import parse_params
    from deepmetric.index.config import IndexParams

    assert parse_params(IndexParams, load_params("index")["index"], "index").factory == "auto"


def test_the_default_auto_factory_builds_exact_search_for_a_small_gallery(work):
    """`index.factory: auto` (the default) resolves by gallery size and dimension: a gallery this small gets
    Flat, and the report (then the bundle manifest) records the factory built and why."""
    tmp, root, manifest = work
    run_stage("index", tmp, _params(root))
    report = json.loads((tmp / "data/08_reporting/index.json").read_text())
    index = deserialize_index((tmp / "data/07_model_output/index.faiss").read_bytes())
    assert report["factory_requested"] == "auto" and report["factory"] == "Flat" and report["search_params"] == {}
    assert report["auto"]["kind"] == "flat" and "Flat for" in report["auto"]["why"]
    assert type(index).__name__ == "IndexFlatIP" and report["recall@10_vs_exact"] == 1.0


def test_bad_parameters_fail_naming_them(work, tmp_path):
    tmp, root, _ = work
    before = (tmp / "data/07_model_output/index.faiss").read_bytes() if (tmp / "data/07_model_output/index.faiss").exists() else None
    with pytest.raises(Exception, match="index.fatcory"):
        run_stage("index", tmp, _params(root, fatcory="Flat"))
    with pytest.raises(Exception, match="needs at least 4096 gallery vectors"):
        run_stage("index", tmp, _params(root, factory="IVF4096,Flat"))
    after = (tmp / "data/07_model_output/index.faiss").read_bytes() if (tmp / "data/07_model_output/index.faiss").exists() else None
    assert before == after, "a failed index run must leave the previous artefact untouched"
