"""`kedro run --pipelines evaluate` against the real catalog (rebased to a tmp dir) and the real parameter file."""

from __future__ import annotations

import json

import pytest

from tests.deploy_fixtures import data_params, write_stage_inputs
from tests.fixtures import STRICT_LIMITS, plant_image
from tests.pipelines.kedro_helpers import load_params, run_stage


@pytest.fixture()
def work(tmp_path):
    root, manifest = write_stage_inputs(tmp_path, model=True)
    return tmp_path, root, manifest


def _params(root, **data):
    evaluate = {**load_params("evaluate")["evaluate"], "baselines": False, "progress": False,
                "grid": {"queries": 2, "neighbours": 2}}
    return {"data": {**data_params(root), **data}, "evaluate": evaluate}


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
