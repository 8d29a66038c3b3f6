"""Match thresholds against brute force over every pair; the refusals; sampling, seeds and intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from deepmetric.evaluation.verification import (
    calibrate_thresholds,
    check_calibration,
    clopper_pearson,
    min_negative_pairs,
    negative_similarities,
    pair_counts,
    positive_similarities,
    threshold_at_fmr,
    thresholds_document,
    verification_rates,
    verification_report,
)
from tests.fixtures import clustered_embeddings


def _tied_set(rng, n: int, classes: int, dim: int = 4):
    """Integer vectors: every score is exact in float32 (any summation order) and many scores tie."""
    return rng.integers(-2, 3, size=(n, dim)).astype(np.float32), rng.integers(0, classes, size=n)


def _all_pairs(x, y):
    pos, neg = [], []
    for i, j in itertools.combinations(range(len(x)), 2):
        (pos if y[i] == y[j] else neg).append(float(x[i] @ x[j]))
    return np.array(pos, np.float32), np.array(neg, np.float32)


def _brute_force_threshold(neg: np.ndarray, fmr: float) -> np.float32:
    """The smallest float32 t with at most fmr·n negatives scoring >= t, by trying every candidate (each score and
    the next float32 above it): the count changes only there."""
    candidates = np.unique(np.concatenate([neg, np.nextafter(neg, np.float32(np.inf))]))
    ok = [t for t in candidates if np.count_nonzero(neg >= t) <= fmr * len(neg) + 1e-9]
    return min(ok)


@pytest.mark.parametrize("fmr", [0.3, 0.1, 0.05, 0.011])
def test_threshold_equals_brute_force_over_all_pairs(fmr):
    rng = np.random.default_rng(int(fmr * 1000))
    x, y = _tied_set(rng, 60, 5)
    pos, neg = _all_pairs(x, y)
    assert len(neg) >= min_negative_pairs(fmr)  # 60 images → ~1,400 negative pairs: exhaustive here
    t = calibrate_thresholds(x, y, fmr=[fmr], max_negatives=10**6)[fmr]
    assert np.float32(t) == _brute_force_threshold(neg, fmr) and t == float(np.float32(t))
    # the server's rule `match = score >= threshold` on every pair gives what the report says
    report = verification_rates(x, y, {fmr: t}, max_negatives=10**6)
    point = report["operating_points"][str(fmr)]
    assert report["negative_pairs"]["exhaustive"] and report["negative_pairs"]["used"] == len(neg)
    assert point["false_matches"] == np.count_nonzero(neg >= t) <= fmr * len(neg)
    assert point["false_non_matches"] == np.count_nonzero(pos < t)
    assert point["fnmr"] == pytest.approx(np.mean(pos < t))
    assert report["positive_pairs"] == len(pos)
    # and one float32 step lower would match too many negatives
    lower = np.nextafter(np.float32(t), np.float32(-np.inf))
    assert np.count_nonzero(neg >= lower) > fmr * len(neg)


def test_pairs_streamed_and_counted():
    rng = np.random.default_rng(0)
    x, y = _tied_set(rng, 45, 4)
    pos, neg = _all_pairs(x, y)
    streamed = np.concatenate(list(positive_similarities(x, y, chunk=3)))
    np.testing.assert_array_equal(np.sort(streamed), np.sort(pos))
    all_neg, exhaustive = negative_similarities(x, y, max_pairs=len(neg), chunk=7)
    assert exhaustive
    np.testing.assert_array_equal(np.sort(all_neg), np.sort(neg))
    assert pair_counts(y) == (len(pos), len(neg))


def test_sampled_negatives_are_seeded_and_unbiased():
    rng = np.random.default_rng(1)
    x, y = _tied_set(rng, 400, 20, dim=8)
    _, neg = _all_pairs(x, y)
    a, exhaustive = negative_similarities(x, y, max_pairs=20_000, seed=5)
    b, _ = negative_similarities(x, y, max_pairs=20_000, seed=5)
    c, _ = negative_similarities(x, y, max_pairs=20_000, seed=6)
    assert not exhaustive and len(a) == 20_000
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # every sampled score is a negative pair's score, and the sample's upper tail matches the population's
    assert np.isin(a, neg).all()
    t = threshold_at_fmr(neg, 0.01)
    k = int(np.count_nonzero(a >= t))
    lo, hi = clopper_pearson(k, len(a), 0.999)
    assert lo <= np.mean(neg >= t) <= hi


def test_refusals_name_the_parameter_and_the_minimum():
    rng = np.random.default_rng(2)
    x, y = _tied_set(rng, 30, 3)  # 30 images, ~290 negative pairs
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"fmr=.* outside \(0, 1\)"):
            calibrate_thresholds(x, y, fmr=[bad])
    with pytest.raises(ValueError, match="fmr is empty"):
        calibrate_thresholds(x, y, fmr=[])
    _, available = pair_counts(y)
    with pytest.raises(ValueError, match=rf"has {available} negative pairs .*fmr=0.001 needs at least 10000 "
                                         r"\(10 / fmr"):
        calibrate_thresholds(x, y, fmr=[0.01, 0.001])
    with pytest.raises(ValueError, match=r"max_negatives=100 is below the 1000 negative pairs fmr=0.01 needs"):
        calibrate_thresholds(np.tile(x, (4, 1)), np.tile(y, 4), fmr=[0.01], max_negatives=100)
    assert min_negative_pairs(0.001) == 10_000 and min_negative_pairs(0.03) == 334


def test_clopper_pearson_known_values():
    # k = 0: the upper bound solves (1 - p)^n = alpha / 2
    lo, hi = clopper_pearson(0, 100, 0.95)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-9)
    # otherwise the bounds are where the binomial tails reach alpha / 2
    from scipy.stats import binom

    lo, hi = clopper_pearson(10, 1000, 0.95)
    assert lo < 0.01 < hi
    assert math.isclose(binom.sf(9, 1000, lo), 0.025, rel_tol=1e-6)  # P(X >= 10 | lo)
    assert math.isclose(binom.cdf(10, 1000, hi), 0.025, rel_tol=1e-6)  # P(X <= 10 | hi)


def test_report_calibrates_on_validation_and_judges_test():
    split = clustered_embeddings(num_classes=60, dim=16, per_class=6, noise=0.7, seed=3)
    val, test = split(np.arange(30)), split(np.arange(30, 60))
    report = verification_report(val, test, fmr=[0.05, 0.01], max_negatives=50_000)
    assert set(report["thresholds"]) == {"0.05", "0.01"}
    assert report["thresholds"]["0.01"] > report["thresholds"]["0.05"]
    for f in ("0.05", "0.01"):
        v, t = report["validation"]["operating_points"][f], report["test"]["operating_points"][f]
        assert v["threshold"] == t["threshold"] == report["thresholds"][f]
        assert v["fmr"] <= float(f)  # in-sample: by construction
        assert t["fmr_ci"][0] <= t["fmr"] <= t["fmr_ci"][1] and 0 < t["fnmr"] < 1
    assert report["test"]["classes"] == 30 and report["test"]["positive_pairs"] == 30 * 15


def test_memory_is_bounded(traced_peak):
    """8,000 images (32 million pairs: 128 MB of float32 scores): sampled negatives and streamed positives."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8_000, 8)).astype(np.float32)
    y = rng.integers(0, 1500, size=8_000)
    report, peak = traced_peak(verification_report, (x[:4000], y[:4000]), (x[4000:], y[4000:]),
                               fmr=[0.01, 0.001], max_negatives=200_000)
    assert report["test"]["negative_pairs"]["used"] == 200_000
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.0f} MB"


def test_thresholds_document_is_the_contract_and_applies_as_score_ge_threshold():
    """The file a bundle carries (format deepmetric.thresholds/1): operating points by decreasing fmr, each a
    threshold that, applied as the server does (score >= threshold) to every test pair, gives its FNMR."""
    rng = np.random.default_rng(5)
    val, test = _tied_set(rng, 80, 8), _tied_set(rng, 60, 6)
    report = verification_report(val, test, fmr=[0.05, 0.2], max_negatives=10**6)
    doc = thresholds_document(report)
    assert doc["format"] == "deepmetric.thresholds/1" and doc["score"] == "cosine"
    assert doc["calibrated_on"] == "val" and doc["default_fmr"] == 0.2
    assert [p["fmr"] for p in doc["operating_points"]] == [0.2, 0.05]
    pos, _ = _all_pairs(*test)
    _, val_neg = _all_pairs(*val)
    for p in doc["operating_points"]:
        assert set(p) == {"fmr", "threshold", "negative_pairs", "fmr_ci95", "fnmr_test", "fnmr_ci95",
                          "positive_pairs_test"}
        assert p["threshold"] == float(_brute_force_threshold(val_neg, p["fmr"]))
        assert p["fnmr_test"] == pytest.approx(np.mean(pos < np.float32(p["threshold"])))
        assert p["positive_pairs_test"] == len(pos) and p["negative_pairs"] == len(val_neg)
        assert p["fnmr_ci95"][0] <= p["fnmr_test"] <= p["fnmr_ci95"][1]
        assert p["fmr_ci95"][0] <= np.mean(val_neg >= p["threshold"]) <= p["fmr_ci95"][1]
    assert thresholds_document(report, default_fmr=0.05)["default_fmr"] == 0.05
    with pytest.raises(ValueError, match=r"default_fmr=0.01 is not one of the calibrated fmr values \[0.2, 0.05\]"):
        thresholds_document(report, default_fmr=0.01)


def test_the_calibration_check_needs_only_labels_and_names_the_parameters():
    y = np.repeat(np.arange(5), 4)  # 20 images: 160 negative pairs
    assert check_calibration(y, [0.1, 0.2]) == [0.1, 0.2]
    with pytest.raises(ValueError, match=r"evaluate.fmr=0.01: the validation split has 160 negative pairs \(20 "
                                         r"images, 5 classes\) .* needs at least 1000"):
        check_calibration(y, [0.2, 0.01], name="evaluate.fmr")
    with pytest.raises(ValueError, match=r"evaluate.fmr=2 outside \(0, 1\)"):
        check_calibration(y, [2], name="evaluate.fmr")
    with pytest.raises(ValueError, match=r"evaluate.negative_pairs=50 is below the 100 negative pairs"):
        check_calibration(y, [0.1], 50, name="evaluate.fmr", max_name="evaluate.negative_pairs")
