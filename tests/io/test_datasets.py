"""The atomic Kedro datasets of deepmetric.io.datasets that the stage tests do not reach on their own: a report whose
timings go to a file DVC does not hash."""

from __future__ import annotations

import json

from deepmetric.io.datasets import ReportDataset


def test_a_report_and_its_timings_are_written_apart(tmp_path):
    ds = ReportDataset(str(tmp_path / "report.json"), str(tmp_path / "timings/stage.json"),
                       ["seconds", "int8.latency_ms", "int8.absent", "absent"])
    report = {"images": 3, "seconds": 1.25, "int8": {"passed": True, "latency_ms": {"fp32": 2.0, "int8": 1.0}}}
    ds.save(report)
    assert report["seconds"] == 1.25 and "latency_ms" in report["int8"], "the caller's dict is not changed"
    assert json.loads((tmp_path / "report.json").read_text()) == {"images": 3, "int8": {"passed": True}}
    assert json.loads((tmp_path / "timings/stage.json").read_text()) == {
        "seconds": 1.25, "int8": {"latency_ms": {"fp32": 2.0, "int8": 1.0}}}
    assert ds.load() == {"images": 3, "int8": {"passed": True}}
    first = (tmp_path / "report.json").read_bytes()
    ds.save({**report, "seconds": 9.5})  # another run: another time, the same report, byte for byte
    assert (tmp_path / "report.json").read_bytes() == first
    assert json.loads((tmp_path / "timings/stage.json").read_text())["seconds"] == 9.5
