"""The match thresholds a bundle carries (``thresholds.json``, written by the evaluate stage): "is this neighbour the
same item?" at a chosen false-match rate.

The file (format ``deepmetric.thresholds/1``) lists operating points calibrated on the validation classes, each a
target false-match rate (``fmr``) and the similarity ``threshold`` that reaches it, sorted by decreasing fmr, and
names the ``default_fmr`` (one of them). ``score: cosine`` is the served ``score`` (inner product of L2-normalised
embeddings); a neighbour is a match iff ``score >= threshold``. :func:`parse_thresholds` checks the file (a bad one
is a :class:`~deepmetric.bundle.format.BundleError` naming it); :class:`Thresholds` picks an operating point and
:func:`mark_matches` marks neighbours — the one place where the comparison is made, for the server and the CLI.

The thresholds belong to the model: a gallery update keeps them. A bundle without the file (built before the
evaluate stage wrote it) still serves, without ``match``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepmetric.bundle.format import THRESHOLDS_FILE, BundleError, json_document

__all__ = ["FORMAT", "NO_THRESHOLDS", "OperatingPoint", "Thresholds", "mark_matches", "parse_thresholds",
           "thresholds_bytes"]

FORMAT = "deepmetric.thresholds/1"
SCORE = "cosine"
#: What `/v1/info` (and `deepmetric search`) say about a bundle without thresholds.
NO_THRESHOLDS = "no thresholds in this bundle: match omitted (rebuild the bundle with the evaluate stage's thresholds.json)"


@dataclass(frozen=True)
class OperatingPoint:
    fmr: float
    threshold: float

    def as_dict(self) -> dict[str, float]:
        return {"fmr": self.fmr, "threshold": self.threshold}


@dataclass(frozen=True)
class Thresholds:
    """A checked thresholds file: its operating points (decreasing fmr), the default one, the raw content."""

    points: tuple[OperatingPoint, ...]
    default_fmr: float
    content: Mapping[str, Any]

    @property
    def fmrs(self) -> list[float]:
        return [p.fmr for p in self.points]

    def point(self, fmr: float | None = None) -> OperatingPoint:
        """The operating point at ``fmr`` (None: the default). ``ValueError`` when ``fmr`` is outside (0, 1) or
        not one of the points (the message lists them)."""
        fmr = self.default_fmr if fmr is None else fmr
        if not (isinstance(fmr, (int, float)) and 0 < fmr < 1):
            raise ValueError(f"fmr must be in (0, 1), got {fmr!r}")
        for p in self.points:
            if math.isclose(p.fmr, fmr, rel_tol=1e-9, abs_tol=0.0):
                return p
        raise ValueError(f"fmr {fmr:g} is not an operating point of this bundle; available: "
                         f"{', '.join(f'{f:g}' for f in self.fmrs)}")

    def describe(self) -> dict[str, Any]:
        """What `/v1/info` shows: the operating points with their figures, the default, what was calibrated on."""
        c = self.content
        return {"score": c["score"], "calibrated_on": c.get("calibrated_on"), "default_fmr": self.default_fmr,
                "operating_points": [dict(p) for p in c["operating_points"]]}


def mark_matches(neighbours: Sequence[Sequence[dict[str, Any]]], threshold: float) -> None:
    """Set ``match`` on every neighbour of every query, in place: ``score >= threshold`` (the one comparison)."""
    for hits in neighbours:
        for h in hits:
            h["match"] = bool(h["score"] >= threshold)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_thresholds(content: Mapping[str, Any] | bytes, name: str = THRESHOLDS_FILE) -> Thresholds:
    """Check a thresholds file (its parsed JSON or its bytes); ``BundleError(name, why)`` when it is not usable:
    wrong format or score, no operating points, an fmr outside (0, 1), a threshold that is not a finite number,
    points not sorted by strictly decreasing fmr, a ``default_fmr`` that is not one of them."""
    content = json_document(content, name, FORMAT)
    if content.get("score") != SCORE:
        raise BundleError(name, f"score is {content.get('score')!r}; the server's score is {SCORE!r}")
    raw = content.get("operating_points")
    if not isinstance(raw, list) or not raw:
        raise BundleError(name, "'operating_points' must be a non-empty list")
    points = []
    for i, p in enumerate(raw):
        where = f"operating_points[{i}]"
        if not isinstance(p, Mapping):
            raise BundleError(name, f"{where} is not an object")
        fmr, thr = p.get("fmr"), p.get("threshold")
        if not _number(fmr) or not 0 < fmr < 1:
            raise BundleError(name, f"{where}.fmr must be a number in (0, 1), got {fmr!r}")
        if not _number(thr):
            raise BundleError(name, f"{where}.threshold must be a finite number, got {thr!r}")
        points.append(OperatingPoint(float(fmr), float(thr)))
    if any(a.fmr <= b.fmr for a, b in zip(points, points[1:])):
        raise BundleError(name, f"operating points must be sorted by decreasing fmr, got {[p.fmr for p in points]}")
    default = content.get("default_fmr")
    if not _number(default) or not any(math.isclose(p.fmr, default, rel_tol=1e-9) for p in points):
        raise BundleError(name, f"default_fmr {default!r} is not one of the operating points "
                          f"{[p.fmr for p in points]}")
    return Thresholds(tuple(points), float(default), content)


def thresholds_bytes(content: Mapping[str, Any]) -> bytes:
    """The file as a bundle holds it (indented, sorted keys: as the evaluate stage's JSON dataset writes it)."""
    return (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
