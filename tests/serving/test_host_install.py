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

from tests.fixtures import free_port

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
def bundle(deploy_bundle):  # tests/conftest.py: the session's default bundle
    return deploy_bundle


PROBE = r"""
import io, json, sys, contextlib
from deepmetric.cli import main
bundle, image = sys.argv[1], sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()) as out:
    main(["info", "--bundle", bundle])
    main(["search", "--bundle", bundle, image, "-k", "3"])
from fastapi.testclient import TestClient
from deepmetric.serving.app import create_app
from deepmetric.bundle import load_bundle
with TestClient(create_app(load_bundle(bundle))) as c:
    assert c.get("/").status_code == 200
    r = c.post("/v1/search?k=2", files={"image": ("q.png", open(image, "rb").read())})
    assert r.status_code == 200, r.text
    r = c.post("/v1/search?k=2&rerank=qe", files={"image": ("q.png", open(image, "rb").read())})
    assert r.status_code == 200 and r.json()["rerank"] == "qe", r.text
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


@pytest.mark.slow  # ~100 s (pip install from its cache / PyPI); .ci/run runs it after `make test`
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the tracked sources")
def test_wheel_installed_with_the_serve_extra_serves_a_bundle(bundle, tmp_path):
    """Build the wheel from the tracked sources, `pip install -c constraints.txt "<wheel>[serve]"` into a fresh
    venv (pip reuses its cache; PyPI fills the rest), then use only that venv's `deepmetric`."""
    folder, root, manifest = bundle
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "pyproject.toml", "README.md", "src", "pipelines"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("deepmetric-*.whl")
    import zipfile

    assert "deepmetric/serving/static/index.html" in zipfile.ZipFile(wheel).namelist()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin/pip"), "install", "--disable-pip-version-check", "-q", "-c",
                          str(REPO / "constraints.txt"), f"{wheel}[serve]"], capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    py, cli = str(venv / "bin/python"), str(venv / "bin/deepmetric")
    absent = subprocess.run([py, "-c", "import importlib.util as u; print([m for m in ('torch', 'kedro', 'dvc', "
                             "'torchvision', 'great_expectations') if u.find_spec(m)])"], capture_output=True,
                            text=True, check=True)
    assert absent.stdout.strip() == "[]", f"the [serve] install pulled in {absent.stdout}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    info = subprocess.run([cli, "info", "--bundle", str(folder)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["gallery_size"] == 36
    query = root / manifest[manifest["split"] == "test"]["path"].iloc[5]
    found = subprocess.run([cli, "search", "--bundle", str(folder), str(query), "-k", "2"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=120)
    assert found.returncode == 0, found.stderr
    top = json.loads(found.stdout)["results"][0]["neighbors"][0]
    assert top["path"] == manifest[manifest["split"] == "test"]["path"].iloc[5] and top["score"] > 0.999
    port = free_port()
    server = subprocess.Popen([cli, "serve", "--bundle", str(folder), "--port", str(port), "--log-level", "warning"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()
                time.sleep(0.3)
        for path in ("/", "/docs", "/static/app.js", "/v1/thumbnails/0"):
            with urllib.request.urlopen(base + path, timeout=30) as r:
                assert r.status == 200, path
    finally:
        server.terminate()
        server.wait(timeout=30)
