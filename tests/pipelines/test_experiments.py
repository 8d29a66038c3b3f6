"""Slow: the experiments workflow of docs/experiments.md on the tiny built-in set. Two methods queued with
`dvc exp run --queue -S …` and run with `--run-all`; `dvc exp show` (the documented columns) lists them with
method, MAP@R, R@1, NMI and training time; `dvc plots diff` draws both training curves."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.project_fixtures import make_project, run

pytestmark = pytest.mark.slow

P = "conf/base/parameters_train.yml"
# The column filter documented in docs/experiments.md and the README.
SHOW = ["--drop", ".*", "--keep", r"^(Experiment|Created|train\.method|train\.epochs|train\.steps_per_epoch|map@r|recall@1"
        r"|nmi|train_seconds|best_epoch)$", "--sort-by", "map@r", "--sort-order", "desc"]


def test_queued_experiments_compare(tmp_path):
    project = make_project(tmp_path)
    (project / "conf/local/.gitkeep").touch()  # as in the repository: queued runs start from a git clone
    for key, value in [("user.name", "exp"), ("user.email", "exp@test"), ("commit.gpgsign", "false")]:
        run(["git", "config", key, value], project)
    run(["dvc", "repro", "validate"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "baseline"], project)
    for method in ("margin", "multi_similarity"):
        run(["dvc", "exp", "run", "--queue", "-n", method, "-S", f"{P}:train.method={method}", "evaluate"], project)
    run(["dvc", "exp", "run", "--run-all"], project)

    table = run(["dvc", "exp", "show", "--no-pager", "--csv", *SHOW], project).stdout
    rows = {r["Experiment"]: r for r in csv.DictReader(io.StringIO(table)) if r["Experiment"]}
    assert set(rows) == {"margin", "multi_similarity"}, table
    assert table.splitlines()[0].split(",") == ["Experiment", "Created", "best_epoch", "map@r", "nmi", "recall@1",
                                                "train_seconds", "train.method", "train.epochs",
                                                "train.steps_per_epoch"], table
    for method, row in rows.items():
        assert row["train.method"] == method
        assert 0 <= float(row["map@r"]) <= 1 and 0 <= float(row["recall@1"]) <= 1 and float(row["train_seconds"]) > 0
    assert rows["margin"]["map@r"] != rows["multi_similarity"]["map@r"]

    plots = json.loads(run(["dvc", "plots", "diff", "margin", "multi_similarity", "--json"], project).stdout)
    for name in ("val_map@r", "loss"):
        assert set(plots["data"][name][0]["revisions"]) == {"margin", "multi_similarity"}
