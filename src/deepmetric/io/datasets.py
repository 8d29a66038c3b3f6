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
    """JSON-serialisable object <-> pretty-printed JSON file (stable key order, for DVC metrics)."""

    def load(self):
        self._check_exists()
        return json.loads(self._filepath.read_text())

    def save(self, data) -> None:
        write_bytes(self._filepath, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


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
