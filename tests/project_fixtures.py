"""A throwaway copy of the project (git + DVC initialised, tiny parameters) and a command runner for it, for the
tests that drive the real pipeline (`tests/pipelines/test_chain.py`) and releases (`tests/release/`). Importable as
``tests.project_fixtures``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from deepmetric.pipeline_registry import STAGES as PIPELINE_STAGES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = list(PIPELINE_STAGES)  # dvc.yaml's, in order (tests/test_pipeline_registry.py checks they agree)

TINY = {
    "parameters_glyphs.yml": {"glyphs": {"num_classes": 16, "min_fonts": 6, "image_size": 32}},
    "parameters_ingest.yml": {"data": {"val_classes": 2, "workers": 1}},
    "parameters_validate.yml": {"validate": {"workers": 1}},
    "parameters_train.yml": {
        "train": {"epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False,
                  "batch": {"classes_per_batch": 4, "samples_per_class": 3}, "eval_batch_size": 64},
        "model": {"resize": 32, "crop": 32},
    },
    # 2 validation classes: 484 negative pairs of glyphs (22 a class), 36 of test_catalogue's bars (6 a class):
    # enough for fmr 0.3 (10 / fmr = 34), not for the shipped 0.001 (10,000)
    "parameters_evaluate.yml": {"evaluate": {"progress": False, "grid": {"queries": 3, "neighbours": 3},
                                             "fmr": [0.5, 0.3]}},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", KEDRO_DISABLE_TELEMETRY="1",
               DO_NOT_TRACK="1", GX_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def make_project(dest: Path, overrides: dict[str, dict] = TINY) -> Path:
    for item in ["pyproject.toml", "dvc.yaml", ".dvcignore", "conf", "src", "pipelines"]:
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "local"))
        else:
            shutil.copy2(src, dest / item)
    (dest / "conf" / "local").mkdir(exist_ok=True)
    (dest / "logs").mkdir(exist_ok=True)  # conf/logging.yml writes logs/deepmetric.log (a fresh clone has logs/)
    for name, over in overrides.items():
        p = dest / "conf" / "base" / name
        p.write_text(yaml.safe_dump(_merge(yaml.safe_load(p.read_text()), over), sort_keys=False))
    run(["git", "init", "-q"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["dvc", "config", "--local", "core.analytics", "false"], dest)
    return dest


def build_repo(tmp: Path, committed_remote: bool) -> tuple[Path, Path, Path]:
    """(build clone, bare git origin, DVC remote folder): a copy of the project (tiny parameters) in git, with
    origin as its git remote and a local-folder DVC default remote, committed (as a team sharing a remote has it)
    or in .dvc/config.local (as `make release` sets it up)."""
    origin, remote = tmp / "origin.git", tmp / "dvc-remote"
    run(["git", "init", "-q", "--bare", str(origin)], tmp)
    (tmp / "build").mkdir()
    project = make_project(tmp / "build", TINY)
    for key, value in [("user.name", "release test"), ("user.email", "release@test"), ("commit.gpgsign", "false"),
                       ("tag.gpgsign", "false")]:
        run(["git", "config", key, value], project)
    run(["git", "remote", "add", "origin", str(origin)], project)
    run(["dvc", "remote", "add", *([] if committed_remote else ["--local"]), "-d", "store", str(remote)], project)
    return project, origin, remote
