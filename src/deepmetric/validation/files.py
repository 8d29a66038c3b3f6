"""The file checks of validation: is every listed image still there, decodable and the bytes ingest hashed?

``validate.decode_check: all`` re-reads, decodes and re-hashes every file, in parallel worker processes
(``deepmetric.data.manifest.probe_files``). ``sample`` is for very large catalogues: every file must exist inside
the dataset root (one ``stat`` each), and ``validate.decode_sample`` files drawn at random — the same draw for the
same manifest, so a rerun checks the same files — are re-read, decoded and compared with their ingest sha256.
Ingest has decoded and hashed every file, so what ``sample`` can miss is a file damaged or replaced *after*
ingest and outside the sample: if a fraction p of the files went bad, the sample of n finds one with probability
1 − (1 − p)^n (n = 1,000: 99.3 % for p = 0.5 %, 99.996 % for p = 1 %).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd

from deepmetric.data.images import ImageLimits, PathEscapeError, safe_join
from deepmetric.data.manifest import probe_files
from deepmetric.validation.params import ValidateParams

__all__ = ["FILE_COLUMNS", "check_files", "sample_rows"]

#: The columns :func:`check_files` returns: why a file is not usable (None: it is), its bytes' sha256 now (the
#: manifest's where it was not re-read), its format where it was decoded.
FILE_COLUMNS = ("file_error", "file_sha256", "file_format")


def sample_rows(paths: list[str], n: int) -> np.ndarray:
    """Sorted row numbers of the ``n`` files ``sample`` re-reads: a draw seeded by the listed paths, so the same
    manifest always samples the same files."""
    if n >= len(paths):
        return np.arange(len(paths))
    seed = int.from_bytes(hashlib.sha256("\n".join(paths).encode()).digest()[:8], "big")
    return np.sort(np.random.default_rng(seed).choice(len(paths), size=n, replace=False))


def _stat(root: str, rel: str) -> str | None:
    """Why a listed path is not a readable file inside ``root`` (None: it is)."""
    try:
        path = safe_join(root, rel)
    except PathEscapeError as e:
        return str(e)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        return f"cannot read file ({e.strerror or e})"
    if not os.path.isfile(path):
        return "is a directory, not an image file"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def check_files(manifest: pd.DataFrame, root: str, params: ValidateParams, limits: ImageLimits,
                progress: bool | None) -> pd.DataFrame:
    """:data:`FILE_COLUMNS` for every manifest row (same index), by ``params.decode_check``."""
    paths = manifest["path"].astype(str).tolist()
    sha = manifest["sha256"].astype(str).tolist() if "sha256" in manifest else [""] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    digests = list(sha)
    formats: list[str | None] = [None] * len(paths)
    if params.decode_check == "all":
        rows = np.arange(len(paths))
    else:
        errors = [_stat(root, p) for p in paths]
        rows = sample_rows(paths, params.decode_sample)
    results = probe_files(root, [paths[i] for i in rows], limits, workers=params.workers,
                          desc="validating images", progress=progress)
    for i, r in zip(rows, results):
        errors[i] = None if r.error is None else r.error.removeprefix("ESCAPE:")
        if r.error is None and r.sha256:
            digests[i] = r.sha256  # unreadable files fail the decode check already: not counted twice
        formats[i] = r.format or None
    return pd.DataFrame({"file_error": pd.array(errors, dtype=object), "file_sha256": digests,
                         "file_format": pd.array(formats, dtype=object)}, index=manifest.index)
