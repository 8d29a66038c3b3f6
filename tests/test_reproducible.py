"""The source date (:mod:`deepmetric.reproducible`): $SOURCE_DATE_EPOCH, else the commit date of HEAD, else now."""

from __future__ import annotations

import datetime as dt
import subprocess

import pytest

from deepmetric.reproducible import SOURCE_DATE_ENV, source_date, source_timestamp


def _git(cwd, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_source_date_epoch_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(SOURCE_DATE_ENV, "1700000000")
    assert source_date(tmp_path) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert source_timestamp(tmp_path) == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv(SOURCE_DATE_ENV, "yesterday")
    with pytest.raises(ValueError, match=r"\$SOURCE_DATE_EPOCH must be an integer.*'yesterday'"):
        source_date(tmp_path)


def test_the_commit_date_of_head_then_now(monkeypatch, tmp_path):
    monkeypatch.delenv(SOURCE_DATE_ENV, raising=False)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert before <= source_date(tmp_path) <= dt.datetime.now(dt.UTC), "not a git work tree: now"
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "add", "f")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-02-03T04:05:06+00:00")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "x")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    assert source_timestamp(tmp_path) == "2024-02-03T04:05:06+00:00"
    assert source_timestamp(tmp_path) == source_timestamp(tmp_path), "the same on every call"
