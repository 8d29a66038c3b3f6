"""What keeps a stage's outputs a function of its inputs: the one date an output may carry.

DVC records every stage output's hash in dvc.lock; a date read from the clock would give a new hash on every run,
so every downstream stage would rerun and every bundle and release hash would change although nothing did. A date
that an output must carry (the bundle manifest's ``created``, the run time in great-expectations' data docs) is
the *source date*, as reproducible builds define it:

1. ``$SOURCE_DATE_EPOCH`` (seconds since 1970, UTC) when it is set (https://reproducible-builds.org/specs/source-date-epoch/);
2. else the committer date of ``HEAD`` of the git work tree the process runs in (the revision whose code and
   parameters built the output);
3. else (not a git work tree, no git) the current time.

Timings (seconds, images/s, latencies) are measurements of a run, not outputs: they go to the log and to files
that DVC does not hash (:class:`deepmetric.io.datasets.ReportDataset`, the training's DVCLive folder).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess

__all__ = ["SOURCE_DATE_ENV", "source_date", "source_timestamp"]

SOURCE_DATE_ENV = "SOURCE_DATE_EPOCH"


def source_date(cwd: str | os.PathLike[str] | None = None) -> dt.datetime:
    """The source date (see the module docstring), UTC, whole seconds. ``cwd``: the folder whose git ``HEAD``
    counts (default: the current directory). A malformed ``$SOURCE_DATE_EPOCH`` is a ``ValueError`` naming it."""
    raw = os.environ.get(SOURCE_DATE_ENV, "").strip()
    if raw:
        try:
            seconds = int(raw)
        except ValueError:
            raise ValueError(f"${SOURCE_DATE_ENV} must be an integer number of seconds since 1970-01-01 UTC, "
                             f"got {raw!r}") from None
    else:
        try:
            proc = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
            seconds = int(proc.stdout.strip()) if proc.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            seconds = None
        if seconds is None:
            return dt.datetime.now(dt.UTC).replace(microsecond=0)
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def source_timestamp(cwd: str | os.PathLike[str] | None = None) -> str:
    """:func:`source_date` as the manifests write dates (ISO 8601, UTC, seconds)."""
    return source_date(cwd).isoformat()
