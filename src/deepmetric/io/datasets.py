"""Kedro datasets that write atomically (temp file + rename) and fail with the path in the message.

Kedro's stock datasets write in place, so an interrupted save leaves a truncated file behind; every
artefact of deepmetric goes through these instead.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from deepmetric.io.atomic import atomic_path, write_bytes


class _FileDataset(AbstractDataset):
    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return self._filepath.exists()

    def _check_exists(self) -> None:
        if not self._filepath.exists():
            raise DatasetError(
                f"{self._filepath} does not exist: run the stage that writes it first "
                "(`dvc repro` runs the whole chain)"
            )


class ParquetDataset(_FileDataset):
    """pandas DataFrame <-> parquet file."""

    def load(self):
        import pandas as pd

        self._check_exists()
        return pd.read_parquet(self._filepath)

    def save(self, data) -> None:
        buf = io.BytesIO()
        data.to_parquet(buf, index=False)
        write_bytes(self._filepath, buf.getvalue())


class JSONDataset(_FileDataset):
    """JSON-serialisable object <-> pretty-printed JSON file (stable key order, for DVC metrics). ``missing_ok``:
    an absent file loads as None (an optional input, e.g. the thresholds of an evaluation that wrote none)."""

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None, missing_ok: bool = False) -> None:
        super().__init__(filepath, metadata)
        self._missing_ok = missing_ok

    def load(self):
        if self._missing_ok and not self._filepath.exists():
            return None
        self._check_exists()
        return json.loads(self._filepath.read_text())

    def save(self, data) -> None:
        write_bytes(self._filepath, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


class ReportDataset(JSONDataset):
    """A stage's JSON report whose timings go to a file of their own.

    ``filepath`` is the report, a DVC output (dvc.lock records its hash); a timing (seconds, images/s, latencies)
    differs on every run, so it would make the report — and every stage downstream of it — change although
    nothing did. The keys named in ``timings`` (top-level, or dotted for nested ones: ``int8.latency_b1_ms``) are
    taken out of the report on save and written to ``timings_filepath`` with the same nesting: a file DVC does
    not hash (dvc.yaml lists it as a top-level metric, so `dvc metrics show` shows it). ``load`` returns the
    report (without the timings)."""

    def __init__(self, filepath: str, timings_filepath: str, timings: list[str],
                 metadata: dict[str, Any] | None = None) -> None:
        super().__init__(filepath, metadata)
        self._timings_filepath = Path(timings_filepath)
        self._timings = [tuple(key.split(".")) for key in timings]

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "timings_filepath": str(self._timings_filepath)}

    def save(self, data) -> None:
        report, timings = json.loads(json.dumps(data)), {}
        for path in self._timings:
            parent, into = report, timings
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
                into = into.setdefault(key, {})
            if isinstance(parent, dict) and path[-1] in parent:
                into[path[-1]] = parent.pop(path[-1])
        super().save(report)
        write_bytes(self._timings_filepath, (json.dumps(_pruned(timings), indent=2, sort_keys=True) + "\n").encode())


def _pruned(tree: dict[str, Any]) -> dict[str, Any]:
    """``tree`` without empty sub-dicts (a nested timing the report did not have)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            v = _pruned(v)
            if not v:
                continue
        out[k] = v
    return out


class TextDataset(_FileDataset):
    def load(self) -> str:
        self._check_exists()
        return self._filepath.read_text()

    def save(self, data: str) -> None:
        write_bytes(self._filepath, data.encode("utf-8"))


class BytesDataset(_FileDataset):
    """Raw bytes (ONNX models, faiss indexes, PNG images)."""

    def load(self) -> bytes:
        self._check_exists()
        return self._filepath.read_bytes()

    def save(self, data: bytes) -> None:
        write_bytes(self._filepath, data)


class TorchDataset(_FileDataset):
    """A ``torch.save``-able object (the trained model file)."""

    def load(self):
        import torch

        self._check_exists()
        return torch.load(self._filepath, map_location="cpu", weights_only=False)

    def save(self, data) -> None:
        import torch

        with atomic_path(self._filepath) as tmp:
            torch.save(data, tmp)


class FileTreeDataset(_FileDataset):
    """A folder of files. ``save`` takes ``{relative posix path: bytes}`` and replaces the whole folder
    atomically; ``load`` returns the folder's path (as a string), since readers take a root folder."""

    def load(self) -> str:
        self._check_exists()
        return str(self._filepath)

    def save(self, data: dict[str, bytes]) -> None:
        with atomic_path(self._filepath) as tmp:
            tmp.mkdir()
            for rel, content in data.items():
                p = PurePosixPath(rel)
                if p.is_absolute() or ".." in p.parts:
                    raise DatasetError(f"refusing to write {rel!r} outside {self._filepath}")
                dest = tmp.joinpath(*p.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(content)


class PathDataset(_FileDataset):
    """A file or folder that a library function writes itself (e.g. great-expectations data docs).
    ``load`` returns the path; ``save`` takes the path of a finished temporary and renames it into place."""

    def load(self) -> str:
        self._check_exists()
        return str(self._filepath)

    def save(self, data: str) -> None:
        src = Path(data)
        with atomic_path(self._filepath) as tmp:
            os.replace(src, tmp)
