"""Slow: the release cycle on real pipeline runs. `dvc repro` of the tiny built-in set → publish v1; another
training seed, `dvc repro` → publish v2; a host (torch and Kedro not importable) pulls v2 and searches, rolls back
to v1 and gets v1's answers again. The stage hash in the manifest is the key DVC filed the bundle stage's run under."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.project_fixtures import build_repo, run
from tests.server_fixtures import host

pytestmark = pytest.mark.slow


def _search(bundle, image) -> list:
    proc = host("search", "--bundle", str(bundle), str(image), "-k", "5")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    return [(h["id"], round(h["score"], 4)) for h in out["results"][0]["neighbors"]]


def test_repro_publish_pull_roll_back(tmp_path):
    # as a team with a shared remote would: the remote in the committed .dvc/config
    project, origin, remote = build_repo(tmp_path, committed_remote=True)
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "pipeline, seed 0"], project)
    run([sys.executable, "-m", "deepmetric.cli", "publish", "v1", "--git-remote", "origin"], project)

    manifest = json.loads((project / "release/bundle/manifest.json").read_text())
    key = manifest["provenance"]["dvc"]["stage_hash"]
    assert (project / ".dvc/cache/runs" / key[:2] / key).is_dir(), "stage_hash is DVC's run-cache key of the bundle stage"
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert manifest["provenance"]["metrics"] == metrics and metrics["map@r"] >= 0 and "train_seconds" not in metrics

    params = project / "conf/base/parameters_train.yml"
    cfg = yaml.safe_load(params.read_text())
    cfg["train"]["seed"] = 1
    params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run(["dvc", "repro"], project).stdout
    assert "Running stage 'train'" in out and "Running stage 'ingest'" not in out
    run(["git", "commit", "-q", "-am", "training seed 1"], project)
    run([sys.executable, "-m", "deepmetric.cli", "publish", "v2", "--git-remote", "origin"], project)

    image = project / "data/01_raw/glyphs/images" / sorted(p.name for p in (project / "data/01_raw/glyphs/images").iterdir())[-1]
    image = sorted(image.iterdir())[0]
    dest = tmp_path / "host" / "releases"
    answers = {}
    for name in ("v2", "v1"):
        proc = host("pull", name, "--repo", str(origin), "--dest", str(dest))
        assert proc.returncode == 0, proc.stderr
        answers[name] = _search(dest / "current", image)
        assert json.loads((dest / "current/manifest.json").read_text())["release"] == name
    assert answers["v1"] != answers["v2"]
    for name in ("v1", "v2"):  # each answer is the one its own release gives at the build machine
        proc = run(["git", "checkout", "-q", name], project)
        run(["dvc", "checkout", "-q", "release/bundle.dvc"], project)
        assert _search(project / "release/bundle", image) == answers[name]
