"""Calibrated match thresholds: "is it the same item?" as ``score >= threshold``, at a stated false-match rate.

Verification pairs come from labels: a *positive* pair is two images of one class, a *negative* pair two images
of different classes; the score of a pair is the inner product of its embeddings (cosine on the L2-normalised
embeddings the model, the index and the server use). For a target false-match rate (FMR) the threshold is set on
the **validation** classes — never on the classes it is then judged on — and the test classes report what it
does there: the false non-match rate (FNMR: positive pairs scored below it) and the realised FMR.

- Positive pairs: all of them, class by class (streamed; a class's pairs in row chunks).
- Negative pairs: all of them when there are at most ``max_negatives``, else ``max_negatives`` pairs drawn
  uniformly (with replacement, from a seeded generator) among all negative pairs.
- Threshold at FMR f over n negative scores: the smallest float32 t with #{score >= t} <= floor(f·n), i.e. just
  above the (floor(f·n)+1)-th highest negative score. ``match = score >= t`` then has realised FMR <= f on the
  calibration pairs, and any lower threshold would exceed f.
- Minimum: at least ``MIN_FALSE_MATCHES / f`` negative pairs (10/f: the threshold then sits at 10 or more false
  matches, so it is not set by a handful of pairs, and the relative standard error of the realised FMR is at most
  1/√10 ≈ 32 %). A validation split with fewer negative pairs is refused with the number needed.
- Intervals: Clopper–Pearson (exact binomial) at ``confidence``, for every rate. Pairs sharing an image are not
  independent, so the intervals are somewhat optimistic for positives (all pairs) and exact only for the
  sampled negatives as draws from the split's negative pairs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from fractions import Fraction

import numpy as np

MIN_FALSE_MATCHES = 10
DEFAULT_MAX_NEGATIVES = 1_000_000
_PAIR_BATCH = 8192


def check_fmr(fmr: Sequence[float], name: str = "fmr") -> list[float]:
    """The target false-match rates, each in (0, 1), without repeats; a ValueError naming ``name`` otherwise."""
    values = [fmr] if isinstance(fmr, (int, float)) else list(fmr)
    if not values:
        raise ValueError(f"{name} is empty: give at least one target false-match rate, e.g. [0.01, 0.001]")
    for f in values:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 or math.isnan(f):
            raise ValueError(f"{name}={f!r} outside (0, 1): a target false-match rate is a fraction of the "
                             "negative pairs, e.g. 0.01")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={values} repeats a value")
    return [float(f) for f in values]


def min_negative_pairs(fmr: float) -> int:
    """Negative pairs needed to calibrate a threshold at ``fmr``: ceil(MIN_FALSE_MATCHES / fmr)."""
    return math.ceil(MIN_FALSE_MATCHES / Fraction(repr(fmr)))


def pair_counts(labels: np.ndarray) -> tuple[int, int]:
    """(positive pairs, negative pairs) among the unordered pairs of distinct images."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = int(counts.sum())
    positives = int((counts * (counts - 1) // 2).sum())
    return positives, n * (n - 1) // 2 - positives


def positive_similarities(embeddings: np.ndarray, labels: np.ndarray, chunk: int = 4096) -> Iterator[np.ndarray]:
    """The scores of all positive pairs (i < j, same label), a class (or a row chunk of a class) at a time."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    order = np.argsort(np.asarray(labels), kind="stable")
    _, start, counts = np.unique(np.asarray(labels)[order], return_index=True, return_counts=True)
    for a, c in zip(start.tolist(), counts.tolist(), strict=True):
        if c < 2:
            continue
        members = x[order[a:a + c]]
        for r in range(0, c - 1, chunk):
            r_stop = min(r + chunk, c - 1)
            s = members[r:r_stop] @ members[r + 1:].T  # row i of the chunk against members after it
            upper = np.arange(r + 1, c)[None, :] > np.arange(r, r_stop)[:, None]
            yield s[upper]


def negative_similarities(embeddings: np.ndarray, labels: np.ndarray, max_pairs: int = DEFAULT_MAX_NEGATIVES,
                          seed: int = 0, chunk: int = 4096) -> tuple[np.ndarray, bool]:
    """Scores of the negative pairs: all of them if there are at most ``max_pairs`` (returns ``exhaustive=True``),
    else ``max_pairs`` drawn uniformly with replacement with ``np.random.default_rng(seed)``."""
    if max_pairs < 1:
        raise ValueError(f"max_negatives={max_pairs} must be at least 1")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    _, available = pair_counts(y)
    if available <= max_pairs:
        parts = []
        for r in range(0, len(x), chunk):
            r_stop = min(r + chunk, len(x))
            s = x[r:r_stop] @ x[r + 1:].T
            keep = (np.arange(r + 1, len(x))[None, :] > np.arange(r, r_stop)[:, None]) \
                & (y[r + 1:][None, :] != y[r:r_stop, None])
            parts.append(s[keep])
        return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), True
    rng = np.random.default_rng(seed)
    out = np.empty(max_pairs, dtype=np.float32)
    filled = 0
    while filled < max_pairs:
        size = min(_PAIR_BATCH, 2 * (max_pairs - filled))
        i, j = rng.integers(0, len(x), size=size), rng.integers(0, len(x), size=size)
        keep = y[i] != y[j]  # also drops i == j
        i, j = i[keep][:max_pairs - filled], j[keep][:max_pairs - filled]
        out[filled:filled + len(i)] = np.einsum("ij,ij->i", x[i], x[j])
        filled += len(i)
    return out, False


def threshold_at_fmr(negative_scores: np.ndarray, fmr: float) -> float:
    """The smallest float32 ``t`` with #{negative_scores >= t} <= floor(fmr · n) (see the module docstring)."""
    fmr = check_fmr([fmr])[0]
    scores = np.asarray(negative_scores, dtype=np.float32)
    allowed = math.floor(Fraction(repr(fmr)) * len(scores))
    if allowed >= len(scores):
        raise ValueError(f"{len(scores)} negative scores are too few for fmr={fmr}")
    # The (allowed+1)-th highest score must not match: the threshold is the next float32 above it.
    kth = np.partition(scores, len(scores) - allowed - 1)[len(scores) - allowed - 1]
    return float(np.nextafter(kth, np.float32(np.inf)))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (quantiles of the beta distribution)."""
    from scipy.special import betaincinv  # scipy.stats would take seconds to import

    if n == 0:
        return float("nan"), float("nan")
    a = 1 - confidence
    lo = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, a / 2))
    hi = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1 - a / 2))
    return lo, hi


def check_calibration(labels: np.ndarray, fmr: Sequence[float], max_negatives: int = DEFAULT_MAX_NEGATIVES,
                      name: str = "fmr", max_name: str = "max_negatives") -> list[float]:
    """The checked ``fmr`` list, or a ValueError when the validation split's labels (or ``max_negatives``) give
    fewer negative pairs than ``min_negative_pairs`` of the smallest fmr. Needs only the labels, so a caller can
    refuse before embedding anything. ``name``/``max_name``: the parameter names the messages use."""
    fmr = check_fmr(fmr, name)
    y = np.asarray(labels)
    _, available = pair_counts(y)
    f = min(fmr)
    need = min_negative_pairs(f)
    if available < need:
        raise ValueError(
            f"{name}={f}: the validation split has {available} negative pairs ({len(y)} images, "
            f"{len(np.unique(y))} classes) and a threshold at fmr={f} needs at least {need} (10 / fmr, so that at "
            f"least {MIN_FALSE_MATCHES} false matches set it): use a larger validation split or a larger fmr")
    if max_negatives < need:
        raise ValueError(f"{max_name}={max_negatives} is below the {need} negative pairs {name}={f} needs "
                         "(10 / fmr)")
    return fmr


def calibrate_thresholds(embeddings: np.ndarray, labels: np.ndarray, fmr: Sequence[float] = (0.01, 0.001),
                         max_negatives: int = DEFAULT_MAX_NEGATIVES, seed: int = 0) -> dict[float, float]:
    """{fmr: threshold} on the validation classes' embeddings and labels. Refuses an ``fmr`` outside (0, 1) and a
    split (or ``max_negatives``) with fewer negative pairs than ``min_negative_pairs(fmr)``."""
    y = np.asarray(labels)
    if len(y) != len(embeddings):
        raise ValueError(f"{len(y)} labels for {len(embeddings)} embeddings")
    fmr = check_calibration(y, fmr, max_negatives)
    scores, _ = negative_similarities(embeddings, y, max_negatives, seed)
    return {f: threshold_at_fmr(scores, f) for f in fmr}


def verification_rates(embeddings: np.ndarray, labels: np.ndarray, thresholds: dict[float, float],
                       max_negatives: int = DEFAULT_MAX_NEGATIVES, seed: int = 0,
                       confidence: float = 0.95) -> dict:
    """FNMR and FMR of ``match = score >= threshold`` on one split, with Clopper–Pearson intervals and the pair
    counts behind them. JSON-able; keys of ``operating_points`` are the fmr targets as strings."""
    y = np.asarray(labels)
    positives, available = pair_counts(y)
    negatives, exhaustive = negative_similarities(embeddings, y, max_negatives, seed)
    ts = {f: np.float32(t) for f, t in thresholds.items()}
    misses = dict.fromkeys(ts, 0)
    for s in positive_similarities(embeddings, y):
        for f, t in ts.items():
            misses[f] += int(np.count_nonzero(s < t))
    points = {}
    for f, t in ts.items():
        false_matches = int(np.count_nonzero(negatives >= t))
        points[str(f)] = {
            "threshold": float(t),
            "fnmr": misses[f] / positives if positives else float("nan"),
            "fnmr_ci": list(clopper_pearson(misses[f], positives, confidence)),
            "false_non_matches": misses[f],
            "fmr": false_matches / len(negatives) if len(negatives) else float("nan"),
            "fmr_ci": list(clopper_pearson(false_matches, len(negatives), confidence)),
            "false_matches": false_matches,
        }
    return {
        "images": int(len(y)), "classes": int(len(np.unique(y))), "positive_pairs": positives,
        "negative_pairs": {"available": available, "used": int(len(negatives)), "exhaustive": exhaustive,
                           "seed": seed},
        "confidence": confidence, "operating_points": points,
    }


def verification_report(validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                        fmr: Sequence[float] = (0.01, 0.001), max_negatives: int = DEFAULT_MAX_NEGATIVES,
                        seed: int = 0, confidence: float = 0.95) -> dict:
    """Thresholds from the validation (embeddings, labels), judged on both splits: what the evaluate stage writes.
    ``thresholds`` maps each fmr (as a string) to its threshold — what the bundle carries."""
    thresholds = calibrate_thresholds(*validation, fmr=fmr, max_negatives=max_negatives, seed=seed)
    return {
        "protocol": {"score": "inner product of the L2-normalised embeddings (cosine)",
                     "match": "score >= threshold", "min_negative_pairs": f"{MIN_FALSE_MATCHES} / fmr",
                     "interval": "Clopper-Pearson", "confidence": confidence, "max_negatives": max_negatives},
        "thresholds": {str(f): t for f, t in thresholds.items()},
        "validation": verification_rates(*validation, thresholds, max_negatives, seed, confidence),
        "test": verification_rates(*test, thresholds, max_negatives, seed, confidence),
    }


THRESHOLDS_FORMAT = "deepmetric.thresholds/1"


def thresholds_document(report: dict, default_fmr: float | None = None) -> dict:
    """The thresholds file the evaluate stage writes and a bundle carries (``format: deepmetric.thresholds/1``):
    one operating point per fmr, sorted by decreasing fmr — its threshold, the validation pairs it was set on
    with the 95 % interval of its realised FMR there, and the test classes' FNMR with its 95 % interval.
    ``default_fmr``: one of the report's fmr values (None: the largest). ``report``: `verification_report`'s,
    at confidence 0.95."""
    if report["protocol"]["confidence"] != 0.95:
        raise ValueError(f"the thresholds file states 95 % intervals; the report has confidence "
                         f"{report['protocol']['confidence']}")
    val, test = report["validation"], report["test"]
    fmrs = sorted((float(f) for f in report["thresholds"]), reverse=True)
    if default_fmr is None:
        default_fmr = fmrs[0]
    if default_fmr not in fmrs:
        raise ValueError(f"default_fmr={default_fmr} is not one of the calibrated fmr values {fmrs}")
    points = []
    for f in fmrs:
        v, t = val["operating_points"][str(f)], test["operating_points"][str(f)]
        points.append({"fmr": f, "threshold": t["threshold"], "negative_pairs": val["negative_pairs"]["used"],
                       "fmr_ci95": v["fmr_ci"], "fnmr_test": t["fnmr"], "fnmr_ci95": t["fnmr_ci"],
                       "positive_pairs_test": test["positive_pairs"]})
    return {"format": THRESHOLDS_FORMAT, "score": "cosine", "calibrated_on": "val", "default_fmr": float(default_fmr),
            "operating_points": points}
