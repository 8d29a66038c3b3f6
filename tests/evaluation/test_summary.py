"""The results table `make repro` ends with (deepmetric.evaluation.summary): the figures of metrics.json and
baselines.json in percent, and a missing or broken file named without a traceback."""

from __future__ import annotations

import json

from deepmetric.evaluation.summary import main, summary_table


def _reporting(tmp_path, metrics, baselines):
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "baselines.json").write_text(json.dumps(baselines))
    return tmp_path


def test_the_table_prints_the_trained_model_and_its_baselines_in_percent(tmp_path, capsys):
    reporting = _reporting(tmp_path, {"map@r": 0.4321, "recall@1": 0.875, "nmi": 0.6, "num_queries": 120},
                           {"pixels": {"map@r": 0.05, "recall@1": 0.25, "nmi": 0.1},
                            "untrained": {"map@r": 0.1, "recall@1": 0.5}})
    assert main([str(reporting)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "zero-shot on the test classes (120 queries)",
        "embedding           MAP@R     R@1     NMI",
        "-" * 41,
        "trained              43.2    87.5    60.0",
        "raw pixels            5.0    25.0    10.0",
        "untrained network    10.0    50.0       -",
    ]


def test_rows_follow_the_fixed_order_and_absent_baselines_are_left_out(tmp_path):
    table = summary_table(_reporting(tmp_path, {"map@r": 1, "recall@1": 1.0, "nmi": 1.0},
                                     {"pretrained": {"map@r": 0.2, "recall@1": 0.3, "nmi": 0.4},
                                      "pixels": {"map@r": 0.0, "recall@1": 0.0, "nmi": 0.0}}))
    lines = table.splitlines()
    assert lines[0] == "zero-shot on the test classes"
    assert [ln.split("  ")[0] for ln in lines[3:]] == ["trained", "raw pixels", "pretrained only"]
    assert lines[3].split()[-3:] == ["100.0", "100.0", "100.0"]


def test_a_missing_or_broken_file_is_named_with_exit_2(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepmetric summary: ") and "baselines.json is missing: run the evaluate stage" in err
    (tmp_path / "baselines.json").write_text("{not json")
    assert main([str(tmp_path)]) == 2
    assert "deepmetric summary: Expecting property name" in capsys.readouterr().err
