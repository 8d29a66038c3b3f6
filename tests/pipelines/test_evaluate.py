"""`kedro run --pipelines evaluate` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pytest

from tests.deploy_fixtures import data_params, write_stage_inputs
from tests.fixtures import STRICT_LIMITS, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


VAL_CLASSES = [2, 3, 4]  # 18 images: 108 negative pairs, enough for fmr 0.1 (10 / fmr = 100)


@pytest.fixture()
def work(tmp_path):
    """The stage inputs, three of the test classes moved to the validation split (the thresholds' classes)."""
    from deepmetric.io.datasets import ParquetDataset

    root, manifest = write_stage_inputs(tmp_path, model=True)
    manifest.loc[manifest["label"].isin(VAL_CLASSES), "split"] = "val"
    ParquetDataset(str(tmp_path / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    return tmp_path, root, manifest


def _params(root, evaluate=None, **data):
    evaluate = {**load_params("evaluate")["evaluate"], "baselines": False, "progress": False,
                "grid": {"queries": 2, "neighbours": 2}, "fmr": [0.2, 0.1], "failures": {"k": 2, "worst": 3},
                **(evaluate or {})}
    return {"data": {**data_params(root), **data}, "evaluate": evaluate}


REPORTS = ("metrics.json", "thresholds.json", "failures.json", "per_class.csv", "worst_queries.png",
           "retrieval_grid.png")


def test_evaluate_stage_writes_metrics_and_grid(work):
    tmp, root, manifest = work
    run_stage("evaluate", tmp, _params(root))
    written = json.loads((tmp / "data/08_reporting/metrics.json").read_text())
    assert written["num_queries"] == int((manifest["split"] == "test").sum())
    assert (tmp / "data/08_reporting/retrieval_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("limit", sorted(STRICT_LIMITS))
def test_the_data_limits_reach_the_evaluation_decode(work, limit):
    """The test split is decoded under data.max_pixels / data.max_aspect_ratio: set stricter than their
    defaults, they refuse an image the defaults accept, naming it and the parameter; no metrics are written."""
    tmp, root, manifest = work
    strict, size, words = STRICT_LIMITS[limit]
    victim = manifest[manifest["split"] == "test"]["path"].iloc[7]
    plant_image(root / victim, size)
    with pytest.raises(Exception) as e:
        run_stage("evaluate", tmp, _params(root, **strict))
    assert victim in str(e.value) and words in str(e.value)
    assert not (tmp / "data/08_reporting/metrics.json").exists()


def test_evaluate_stage_writes_thresholds_and_the_failure_report(work):
    """thresholds.json as the bundle reads it (format deepmetric.thresholds/1), FNMR@FMR in metrics.json, the
    failure report, the per-class CSV for `dvc plots` and the worst-queries grid."""
    import pandas as pd

    tmp, root, manifest = work
    run_stage("evaluate", tmp, _params(root))
    out = tmp / "data/08_reporting"
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["format"] == "deepmetric.thresholds/1" and doc["score"] == "cosine" and doc["calibrated_on"] == "val"
    assert doc["default_fmr"] == 0.2 and [p["fmr"] for p in doc["operating_points"]] == [0.2, 0.1]
    val = manifest[manifest["split"] == "val"]
    test = manifest[manifest["split"] == "test"]
    for p in doc["operating_points"]:
        assert p["negative_pairs"] == len(val) * (len(val) - 1) // 2 - 3 * 15  # every validation negative pair
        assert p["positive_pairs_test"] == test["label"].nunique() * 15
        assert 0 <= p["fnmr_test"] <= 1 and p["fnmr_ci95"][0] <= p["fnmr_test"] <= p["fnmr_ci95"][1]
    assert doc["operating_points"][1]["threshold"] >= doc["operating_points"][0]["threshold"]
    metrics = json.loads((out / "metrics.json").read_text())
    for p in doc["operating_points"]:
        assert metrics[f"fnmr@fmr={p['fmr']}"] == p["fnmr_test"]
        assert metrics[f"threshold@fmr={p['fmr']}"] == p["threshold"]
    failures = json.loads((out / "failures.json").read_text())
    assert len(failures["worst_queries"]) == 3 and all(len(w["neighbours"]) == 2 for w in failures["worst_queries"])
    assert failures["verification"]["validation"]["images"] == len(val)
    names = dict(zip(manifest["label"], manifest["class_name"]))
    assert all(w["class_name"] == names[w["label"]] for w in failures["worst_queries"])
    assert all(p["class_a_name"] == names[p["class_a"]] and p["class_b_name"] == names[p["class_b"]]
               for p in failures["confused_pairs"]) and failures["confused_pairs"]
    per_class = pd.read_csv(out / "per_class.csv")
    assert sorted(per_class["label"]) == sorted(test["label"].unique())
    assert list(per_class["map@r"]) == sorted(per_class["map@r"])  # worst first
    assert metrics["worst_class_map@r"] == pytest.approx(per_class["map@r"].iloc[0], rel=1e-5)
    assert (out / "worst_queries.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerank_adds_its_metrics_beside_the_plain_ones(work):
    tmp, root, _ = work
    run_stage("evaluate", tmp, _params(root))
    plain = json.loads((tmp / "data/08_reporting/metrics.json").read_text())
    assert not any(key.startswith("rerank/") for key in plain)
    run_stage("evaluate", tmp, _params(root, {"rerank": "qe"}))
    reranked = json.loads((tmp / "data/08_reporting/metrics.json").read_text())
    assert {"rerank/map@r", "rerank/recall@1"} <= set(reranked) and 0 <= reranked["rerank/map@r"] <= 1
    assert {k: v for k, v in reranked.items() if not k.startswith("rerank/")} == plain


def test_per_category_metrics_when_the_manifest_has_categories(work):
    from deepmetric.io.datasets import ParquetDataset

    tmp, root, manifest = work
    manifest["category"] = ["even" if label % 2 == 0 else "odd" for label in manifest["label"]]
    ParquetDataset(str(tmp / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    run_stage("evaluate", tmp, _params(root))
    metrics = json.loads((tmp / "data/08_reporting/metrics.json").read_text())
    failures = json.loads((tmp / "data/08_reporting/failures.json").read_text())
    assert {row["category"] for row in failures["per_category"]} == {"even", "odd"}
    for row in failures["per_category"]:
        assert metrics[f"category/{row['category']}/map@r"] == row["map@r"]
        assert metrics[f"category/{row['category']}/recall@1"] == row["recall@1"]
    test = manifest[manifest["split"] == "test"]
    assert sum(row["queries"] for row in failures["per_category"]) == len(test)


@pytest.mark.parametrize("evaluate, words", [
    ({"fmr": [0.1, 0.01]}, r"evaluate.fmr=0.01: the validation split has 108 negative pairs \(18 images, 3 classes\)"
                           r".* needs at least 1000 .*data.val_classes"),
    ({"fmr": [0.1, 1.5]}, r"evaluate.fmr = \[0.1, 1.5\]: .*fmr=1.5 outside \(0, 1\)"),
    ({"fmr": [0.2], "default_fmr": 0.1}, r"evaluate.*default_fmr=0.1 is not one of fmr \[0.2\]"),
    ({"rerank": "qe2"}, r"evaluate.rerank = 'qe2': Input should be 'none', 'qe', 'dba' or 'kreciprocal'"),
    ({"rerank": "kreciprocal"}, r"evaluate.rerank=kreciprocal re-ranks among 21 neighbours per query, but the "
                                r"test split gives each query 17"),
    ({"negative_pairs": 50}, r"evaluate.negative_pairs=50 is below the 100 negative pairs evaluate.fmr=0.1 needs"),
])
def test_refusals_name_the_parameter_and_write_nothing(work, evaluate, words):
    tmp, root, _ = work
    with pytest.raises(Exception, match=words):
        run_stage("evaluate", tmp, _params(root, evaluate))
    assert not any((tmp / "data/08_reporting" / name).exists() for name in REPORTS)
