"""`python -m deepmetric.release.lockcheck` (the `.ci/run` check that dvc.lock is current for the committed code and
parameters), on a throwaway DVC project with two stages: a git-tracked code file and a parameter file as the first
stage's dependencies, a data file DVC manages (absent from a fresh clone) beside them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.project_fixtures import run

DVC_YAML = """\
stages:
  train:
    cmd: python src/train.py
    deps:
      - src/train.py
      - data/raw.txt
    params:
      - params.yaml:
          - train
    outs:
      - model.txt
      - report.json:
          cache: false
  evaluate:
    cmd: python -c "open('metrics.txt', 'w').write(open('model.txt').read())"
    deps:
      - model.txt
    outs:
      - metrics.txt
"""


def _check(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deepmetric.release.lockcheck"], cwd=project, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The project after `dvc repro` and a commit of everything git tracks (dvc.lock included)."""
    project = tmp_path_factory.mktemp("lockcheck") / "project"
    (project / "src").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "src/train.py").write_text("import yaml\nlr = yaml.safe_load(open('params.yaml'))['train']['lr']\n"
                                          "open('model.txt', 'w').write(open('data/raw.txt').read() + str(lr))\n"
                                          "open('report.json', 'w').write('{}')\n")
    (project / "data/raw.txt").write_text("images\n")
    (project / "params.yaml").write_text("train:\n  lr: 1\n")
    (project / "dvc.yaml").write_text(DVC_YAML)
    (project / ".gitignore").write_text("/data/\n")
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "--local", "core.analytics", "false"], project)
    run(["dvc", "repro", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "built"],
        project)
    return project


@pytest.fixture()
def clone(built, tmp_path) -> Path:
    """A fresh clone of it: the code, parameters, dvc.yaml/dvc.lock and git-tracked reports; no data, no outputs."""
    dest = tmp_path / "clone"
    run(["git", "clone", "-q", str(built), str(dest)], tmp_path)
    assert not (dest / "data").exists() and not (dest / "model.txt").exists()
    return dest


def test_a_current_lock_passes_on_a_fresh_clone_without_data_or_outputs(clone):
    proc = _check(clone)
    assert proc.returncode == 0, proc.stderr
    assert "dvc.lock is current" in proc.stdout
    assert not (clone / "model.txt").exists() and not (clone / "data").exists(), "nothing was rebuilt"


def test_a_code_change_fails_naming_the_stage_the_file_and_what_to_run(clone):
    (clone / "src/train.py").write_text((clone / "src/train.py").read_text() + "# tuned\n")
    proc = _check(clone)
    assert proc.returncode == 1
    assert "dvc.lock is stale" in proc.stderr and "Traceback" not in proc.stderr
    assert "  train: src/train.py modified" in proc.stderr
    assert "evaluate:" not in proc.stderr, "evaluate's own dependency (model.txt) is an output, not code"
    assert "run `dvc repro train`" in proc.stderr


def test_a_parameter_change_fails_naming_the_parameter(clone):
    (clone / "params.yaml").write_text("train:\n  lr: 2\n")
    proc = _check(clone)
    assert proc.returncode == 1
    assert "  train: parameter params.yaml:train modified" in proc.stderr


def test_a_changed_command_or_committed_report_fails(clone):
    (clone / "dvc.yaml").write_text(DVC_YAML.replace("open('model.txt')", "open('model.txt', 'r')"))
    (clone / "report.json").write_text('{"edited": true}')
    proc = _check(clone)
    assert proc.returncode == 1
    assert "  evaluate: command in dvc.yaml" in proc.stderr
    assert "output report.json modified" in proc.stderr


def test_not_a_dvc_project_is_exit_2(tmp_path):
    proc = _check(tmp_path)
    assert proc.returncode == 2 and "has no dvc.yaml" in proc.stderr and "Traceback" not in proc.stderr
