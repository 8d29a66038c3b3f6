"""What both sides of a release agree on (deepmetric.release.record): valid names, the one error type and its
exit statuses, the one-line summary of a record."""

from __future__ import annotations

import pytest

from deepmetric.release.record import EXIT, ReleaseError, check_name, summary, unusable_remote


@pytest.mark.parametrize("name", ["v3", "v1.2.0", "2026-11-rc1", "V_7"])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "-v1", ".v1", "v1..2", "v1.lock", "v1.", "v 1", "v1:x", "x" * 64])
def test_invalid_names_are_refused_as_bad_input(name):
    with pytest.raises(ReleaseError, match="not valid") as e:
        check_name(name)
    assert e.value.exit_code == 3


def test_every_refusal_kind_has_its_own_exit_status_and_an_unknown_kind_is_a_bug():
    assert sorted(EXIT.values()) == [2, 3, 4, 5, 6]
    assert [ReleaseError(kind, "m").exit_code for kind in ("checksum", "unknown_release", "not_ready")] == [2, 4, 6]
    with pytest.raises(ValueError, match="unknown ReleaseError kind 'oops'"):
        ReleaseError("oops", "m")


def test_summary_shows_the_headline_metrics_and_the_versions():
    record = {"name": "v2", "method": "margin", "dataset": "glyphs", "metrics": {"map@r": 0.4375, "recall@1": 1,
              "nmi": "n/a"}, "model_version": "m1", "index_version": "i1", "git_revision": "0123456789abcdef"}
    assert summary(record) == ("v2: margin on glyphs (map@r 0.4375, recall@1 1.0000), model m1, index i1, "
                               "built from 0123456789ab")
    assert summary({"name": "v1"}) == "v1: None on None, model None, index None, built from None"


def test_an_unusable_remote_names_dvc_words_and_the_remotes_there_are():
    err = unusable_remote(Exception("config file error: remote 'x' doesn't exist"), {"store", "backup"}, "pass --remote")
    assert err.exit_code == 5
    assert str(err) == ("DVC remote unusable: remote 'x' doesn't exist (configured remotes: backup, store); "
                        "pass --remote")
    assert "(configured remotes: none)" in str(unusable_remote(Exception("e"), [], "h"))
