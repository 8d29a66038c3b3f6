"""The whole chain through DVC and Kedro on a tiny built-in dataset, in a throwaway copy of the project.

One `dvc repro` runs every stage end to end (glyphs → … → bundle); then the DVC contract: a second repro
does nothing, a training parameter reruns train and what follows but not ingest/validate, `kedro run
--pipelines evaluate` runs alone on existing artefacts, `dvc metrics show` / `dvc plots show` work.
"""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from tests.project_fixtures import STAGES, make_project, run


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    dest = make_project(tmp_path_factory.mktemp("chain"))
    # committed, as a clone is: the dates outputs carry are the commit's (the source date), not the clock's
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "x"], dest)
    run(["dvc", "repro"], dest)
    return dest


def test_every_stage_writes_its_outputs(project):
    expected = [
        "data/01_raw/glyphs/images.txt", "data/02_intermediate/manifest.parquet",
        "data/02_intermediate/manifest_validated.parquet", "data/08_reporting/validation.json",
        "data/06_models/model.pt", "data/06_models/checkpoints/last.pt", "data/08_reporting/train/metrics.json",
        "data/08_reporting/metrics.json", "data/08_reporting/baselines.json", "data/08_reporting/retrieval_grid.png",
        "data/08_reporting/thresholds.json", "data/08_reporting/failures.json", "data/08_reporting/per_class.csv",
        "data/08_reporting/worst_queries.png",
        "data/06_models/model.onnx", "data/08_reporting/export.json", "data/07_model_output/index.faiss",
        "data/07_model_output/ids.parquet", "data/08_reporting/index.json", "data/09_deploy/bundle/manifest.json",
    ]
    missing = [p for p in expected if not (project / p).exists()]
    assert not missing
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi"} <= set(metrics)
    # training time for `dvc exp show`: the epochs' training seconds of the log, beside the outputs (issue 23)
    import pandas as pd

    log = pd.read_csv(project / "data/08_reporting/train/plots/metrics/seconds.tsv", sep="\t")
    timings = json.loads((project / "data/08_reporting/timings/train.json").read_text())
    assert timings["train_seconds"] == pytest.approx(log["seconds"].sum(), abs=0.1) and timings["train_seconds"] > 0
    assert "train_seconds" not in metrics
    baselines = json.loads((project / "data/08_reporting/baselines.json").read_text())
    assert {"pixels", "untrained", "trained"} <= set(baselines)
    assert (project / "data/08_reporting/retrieval_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (project / "dvc.lock").exists()


def test_second_repro_does_nothing(project):
    out = run(["dvc", "status"], project).stdout
    assert "up to date" in out, out
    out = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in out, out


def test_evaluate_runs_alone_on_existing_artefacts(project):
    metrics = project / "data/08_reporting/metrics.json"
    before = metrics.stat().st_mtime_ns
    proc = run(["kedro", "run", "--pipelines", "evaluate"], project)
    assert metrics.stat().st_mtime_ns > before
    assert json.loads(metrics.read_text())["map@r"] >= 0
    # conf/logging.yml: the console has one line per node; per-dataset lines go to logs/deepmetric.log
    console = proc.stdout + proc.stderr
    assert "Running node: evaluate" in console
    assert "Loading data from" not in console and "Saving data to" not in console
    logged = (project / "logs" / "deepmetric.log").read_text()
    assert "Loading data from" in logged and "Saving data to" in logged


def test_dvc_metrics_and_plots_show(project, tmp_path):
    out = run(["dvc", "metrics", "show", "--json"], project).stdout
    shown = json.loads(out)
    assert "map@r" in json.dumps(shown)
    # the training's timings and its DVCLive summary, beside the outputs (issue 23)
    assert "train_seconds" in json.dumps(shown) and "data/08_reporting/train/metrics.json" in json.dumps(shown)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "validation MAP@R per epoch" in page and "training loss per epoch" in page and "val_map@r" in page
    # the short table `make repro` ends with
    table = run([sys.executable, "-m", "deepmetric.evaluation.summary", "data/08_reporting"], project).stdout
    trained = json.loads((project / "data/08_reporting/metrics.json").read_text())
    row = next(line for line in table.splitlines() if line.startswith("trained"))
    assert f"{100 * trained['map@r']:.1f}" in row and f"{100 * trained['recall@1']:.1f}" in row
    assert any(line.startswith("raw pixels") for line in table.splitlines())


def test_bad_parameter_stops_before_any_work(project):
    params = project / "conf/base/parameters_train.yml"
    original = params.read_text()
    model = project / "data/06_models/model.pt"
    before = model.read_bytes()
    try:
        cfg = yaml.safe_load(original)
        cfg["train"]["methods"]["margin"] = {"marginn": 0.3}
        params.write_text(yaml.safe_dump(cfg, sort_keys=False))
        proc = run(["kedro", "run", "--pipelines", "train"], project, check=False)
        assert proc.returncode != 0
        assert "train.methods.margin.marginn" in proc.stdout + proc.stderr
        # reported by its message (deepmetric.errors), the traceback only in the log file
        assert "Traceback" not in proc.stderr and "(ParamsError; the traceback is in logs/deepmetric.log)" in proc.stderr
        assert "stopped by ParamsError" in (project / "logs/deepmetric.log").read_text()
    finally:
        params.write_text(original)
    assert model.read_bytes() == before


def test_failing_stage_leaves_previous_artefacts_whole(project):
    """A stage that dies half-way (an image corrupted after validation) leaves its outputs as they were."""
    import pandas as pd

    manifest = pd.read_parquet(project / "data/02_intermediate/manifest_validated.parquet")
    victim = project / "data/01_raw/glyphs" / manifest[manifest["split"] == "test"]["path"].iloc[-1]
    original = victim.read_bytes()
    outputs = [project / "data/08_reporting/metrics.json", project / "data/08_reporting/baselines.json"]
    before = [p.read_bytes() for p in outputs]
    try:
        victim.write_bytes(original[: len(original) // 3])  # truncated PNG
        proc = run(["kedro", "run", "--pipelines", "evaluate"], project, check=False)
        assert proc.returncode != 0
        assert victim.name in proc.stdout + proc.stderr
        # met in a DataLoader worker: still the file and the reason, not the worker's traceback
        assert "Traceback" not in proc.stderr and "(ImageDecodeError; the traceback is in" in proc.stderr
    finally:
        victim.write_bytes(original)
    assert [p.read_bytes() for p in outputs] == before
    leftovers = [p for p in (project / "data").rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp")]
    assert not leftovers


def _out_hashes(project) -> dict[str, str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {f"{stage}:{out['path']}": out["md5"] for stage, entry in lock["stages"].items()
            for out in entry.get("outs", [])}


@pytest.mark.slow
def test_a_forced_repro_gives_the_same_lock(project):
    """Every DVC output is a function of its inputs: `dvc repro -f` reruns every stage and dvc.lock records the same
    hash for every out (no clock, no timing, no thread-count-dependent sum in them; issue 23)."""
    before = _out_hashes(project)
    assert len(before) >= 12
    run(["dvc", "repro", "-f"], project)
    after = _out_hashes(project)
    assert {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v} == {}


def test_training_parameter_reruns_train_and_downstream_only(project):
    """Last in this module: it changes the project for good (a new learning rate)."""
    params = project / "conf/base/parameters_train.yml"
    cfg = yaml.safe_load(params.read_text())
    cfg["train"]["optimizer"]["lr"] = 0.002
    params.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = run(["dvc", "repro"], project).stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in out]
    assert ran == ["train", "evaluate", "export", "index", "bundle"], out
    assert "up to date" in run(["dvc", "status"], project).stdout
