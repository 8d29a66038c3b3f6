"""The thresholds file a bundle carries (contract of issue 21): checked field by field, a bad one refused naming the
file; the operating point picked by fmr; ``match`` is ``score >= threshold``."""

from __future__ import annotations

import copy
import json
import math

import pytest

from deepmetric.bundle import BundleError
from deepmetric.bundle.thresholds import mark_matches, parse_thresholds, thresholds_bytes
from tests.deploy_fixtures import THRESHOLDS


def test_the_contract_example_parses():
    t = parse_thresholds(THRESHOLDS)
    assert t.fmrs == [0.01, 0.001] and t.default_fmr == 0.01
    assert t.point().as_dict() == {"fmr": 0.01, "threshold": 0.6132}
    assert t.point(0.001).as_dict() == {"fmr": 0.001, "threshold": 0.7421}
    assert t.point(float("1e-3")).threshold == 0.7421
    described = t.describe()
    assert described["operating_points"] == THRESHOLDS["operating_points"]
    assert described["default_fmr"] == 0.01 and described["calibrated_on"] == "val" and described["score"] == "cosine"
    # the bytes of the file as a bundle holds it parse to the same
    assert parse_thresholds(thresholds_bytes(THRESHOLDS)).content == THRESHOLDS


@pytest.mark.parametrize("fmr", [0.0, 1.0, -0.01, 1.5, math.nan, math.inf])
def test_fmr_outside_the_open_interval_is_refused(fmr):
    with pytest.raises(ValueError, match=r"fmr must be in \(0, 1\)"):
        parse_thresholds(THRESHOLDS).point(fmr)


def test_an_fmr_that_is_no_operating_point_names_the_available_ones():
    with pytest.raises(ValueError, match=r"fmr 0\.05 is not an operating point of this bundle; available: 0\.01, 0\.001"):
        parse_thresholds(THRESHOLDS).point(0.05)


def _bad(edit):
    content = copy.deepcopy(THRESHOLDS)
    edit(content)
    return content


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(format="deepmetric.thresholds/2"), "format is 'deepmetric.thresholds/2'"),
    (lambda c: c.update(score="euclidean"), "score is 'euclidean'"),
    (lambda c: c.update(operating_points=[]), "'operating_points' must be a non-empty list"),
    (lambda c: c.pop("operating_points"), "'operating_points' must be a non-empty list"),
    (lambda c: c["operating_points"].__setitem__(1, 0.5), r"operating_points\[1\] is not an object"),
    (lambda c: c["operating_points"][1].update(fmr=0), r"operating_points\[1\]\.fmr must be a number in \(0, 1\)"),
    (lambda c: c["operating_points"][0].update(fmr=1.0), r"operating_points\[0\]\.fmr must be a number in \(0, 1\)"),
    (lambda c: c["operating_points"][0].update(fmr="0.01"), r"operating_points\[0\]\.fmr must be a number"),
    (lambda c: c["operating_points"][0].update(threshold=math.nan), r"operating_points\[0\]\.threshold must be a finite"),
    (lambda c: c["operating_points"][1].update(threshold=None), r"operating_points\[1\]\.threshold must be a finite"),
    (lambda c: c["operating_points"][1].update(threshold=True), r"operating_points\[1\]\.threshold must be a finite"),
    (lambda c: c["operating_points"].reverse(), r"sorted by decreasing fmr, got \[0\.001, 0\.01\]"),
    (lambda c: c["operating_points"].append(dict(c["operating_points"][1])), "sorted by decreasing fmr"),
    (lambda c: c.update(default_fmr=0.05), r"default_fmr 0\.05 is not one of the operating points"),
    (lambda c: c.pop("default_fmr"), "default_fmr None is not one of the operating points"),
])
def test_a_bad_file_is_refused_naming_it(edit, message):
    with pytest.raises(BundleError, match=message) as e:
        parse_thresholds(_bad(edit))
    assert e.value.file == "thresholds.json"


def test_unreadable_bytes_are_refused_naming_the_file():
    with pytest.raises(BundleError, match="thresholds.json: not valid JSON"):
        parse_thresholds(b"{\"format\": ")
    with pytest.raises(BundleError, match="thresholds.json: not a JSON object"):
        parse_thresholds(json.dumps([THRESHOLDS]).encode())
    with pytest.raises(BundleError, match="elsewhere.json: not valid JSON"):
        parse_thresholds(b"NaN]", name="elsewhere.json")


def test_a_match_is_a_score_at_or_above_the_threshold():
    hits = [[{"score": 0.9}, {"score": 0.6132}, {"score": 0.61319}], [], [{"score": -1.0}]]
    mark_matches(hits, 0.6132)
    assert [[h["match"] for h in q] for q in hits] == [[True, True, False], [], [False]]
    assert all(type(h["match"]) is bool for q in hits for h in q)
