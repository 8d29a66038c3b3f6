"""`dvc repro` end to end with every `train.method` (export and index included). Slow: `make test-slow`."""

from __future__ import annotations

import json

import pytest
import yaml

from deepmetric.methods import METHODS
from tests.project_fixtures import STAGES, make_project, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("methods"))
    run(["dvc", "repro", "validate"], dest)
    return dest


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"margin"}))
def test_repro_with_method(project, method):
    params = project / "conf/base/parameters_train.yml"
    cfg = yaml.safe_load(params.read_text())
    cfg["train"]["method"] = method
    params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run(["dvc", "repro"], project).stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in out]
    assert ran == ["train", "evaluate", "export", "index", "bundle"], out
    report = json.loads((project / "data/08_reporting/export.json").read_text())
    assert report["passed"] and report["method"] == method
    manifest = json.loads((project / "data/09_deploy/bundle/manifest.json").read_text())
    assert manifest["method"] == method
