"""The bundle format: which files a bundle holds, the manifest's canonical JSON and its own hash.

A bundle is one flat folder: ``model.onnx``, ``index.faiss``, ``ids.parquet``, ``manifest.json``; when the
evaluate stage calibrated match thresholds, ``thresholds.json`` (:mod:`deepmetric.bundle.thresholds`, declared by the
manifest's ``thresholds`` entry); when the bundle carries gallery thumbnails, ``thumbnails-NNNNN.parquet`` shards.
A gallery changed by ``deepmetric gallery add|remove`` (:mod:`deepmetric.bundle.gallery`) also holds, besides the
unchanged base ``index.faiss`` + ``ids.parquet``, append-only segments — ``segment-NNNNN.faiss`` (an exact index of
the added vectors) with its id rows ``segment-NNNNN.parquet``, declared by the manifest's ``segments`` list
(``[{"index": …, "ids": …, "items": n}]``, in gallery row order) — and ``tombstones.parquet`` (the removed ids, one
``id`` column), declared by ``{"tombstones": {"file": "tombstones.parquet", "items": n}}``. The format stays
``deepmetric-bundle/1``: a bundle without them is what it was, and a reader from before segments refuses one with
them (its ``files`` list names files that reader does not expect) rather than serve a partial gallery.
The manifest lists the sha256 (``files``) and size (``sizes``) of every other file and carries ``manifest_sha256``: the sha256 of its own canonical JSON
(sorted keys, no whitespace, ASCII) without that key, so a changed byte in any file, the manifest included, is
caught. :mod:`deepmetric.bundle.writer` is the one place that writes a bundle, :mod:`deepmetric.bundle.reader`
the one that reads and verifies it; both take names and hashes from here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

FORMAT = "deepmetric-bundle/1"
MODEL_FILE, INDEX_FILE, IDS_FILE, MANIFEST_FILE = "model.onnx", "index.faiss", "ids.parquet", "manifest.json"
THRESHOLDS_FILE = "thresholds.json"
TOMBSTONES_FILE = "tombstones.parquet"
PAYLOAD_FILES = (MODEL_FILE, INDEX_FILE, IDS_FILE)
ID_COLUMNS = ("id", "label", "class_name", "path")
SHARD_PATTERN = re.compile(r"^thumbnails-\d{5}\.parquet$")
SEGMENT_PATTERN = re.compile(r"^segment-(\d{5})\.(faiss|parquet)$")

__all__ = ["FORMAT", "ID_COLUMNS", "IDS_FILE", "INDEX_FILE", "MANIFEST_FILE", "MODEL_FILE", "PAYLOAD_FILES",
           "SEGMENT_PATTERN", "SHARD_PATTERN", "THRESHOLDS_FILE", "TOMBSTONES_FILE", "BundleError", "declared_files",
           "declared_segments", "segment_names", "json_document", "manifest_bytes", "manifest_sha256", "sha256",
           "sha256_file", "shard_name", "short", "timestamp"]


class BundleError(ValueError):
    """A bundle that must not be served. ``file`` names the offending file, ``reason`` says why."""

    def __init__(self, file: str, reason: str) -> None:
        self.file, self.reason = file, reason
        super().__init__(f"bundle refused: {file}: {reason}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read ``chunk`` bytes at a time (memory bounded by ``chunk``, whatever its size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short(digest: Any) -> str:
    """The first 12 hex digits of a sha256, for messages (``none`` when there is none)."""
    return str(digest)[:12] if digest else "none"


def shard_name(i: int) -> str:
    """The file name of thumbnail shard ``i``."""
    return f"thumbnails-{i:05d}.parquet"


def segment_names(i: int) -> tuple[str, str]:
    """The file names of gallery segment ``i``: its faiss index and its id rows."""
    return f"segment-{i:05d}.faiss", f"segment-{i:05d}.parquet"


def manifest_sha256(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``manifest_sha256`` key."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode())


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """How manifest.json is written (indented, sorted keys)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def declared_files(manifest: Mapping[str, Any]) -> list[str]:
    """Every file besides manifest.json that ``manifest`` says the bundle holds: the payload, thresholds.json when
    its ``thresholds`` entry declares it, then the thumbnail shards it declares (plain names of the expected
    pattern, nothing else)."""
    files = list(PAYLOAD_FILES)
    thresholds = manifest.get("thresholds")
    if thresholds is not None:
        if not isinstance(thresholds, dict) or thresholds.get("file") != THRESHOLDS_FILE:
            raise BundleError(MANIFEST_FILE, f"'thresholds' must be {{\"file\": \"{THRESHOLDS_FILE}\"}}")
        files.append(THRESHOLDS_FILE)
    for seg in declared_segments(manifest):
        files += [seg["index"], seg["ids"]]
    tombstones = manifest.get("tombstones")
    if tombstones is not None:
        if (not isinstance(tombstones, dict) or tombstones.get("file") != TOMBSTONES_FILE
                or not _count(tombstones.get("items"))):
            raise BundleError(MANIFEST_FILE, f"'tombstones' must be {{\"file\": \"{TOMBSTONES_FILE}\", \"items\": n}}")
        files.append(TOMBSTONES_FILE)
    info = manifest.get("thumbnails")
    if info is None:
        return files
    names = info.get("files") if isinstance(info, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and SHARD_PATTERN.match(n) for n in names):
        raise BundleError(MANIFEST_FILE, "'thumbnails.files' must be a list of thumbnails-NNNNN.parquet names")
    return [*files, *names]


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def declared_segments(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifest's gallery segments (``[]`` for a bundle without any), each ``{"index", "ids", "items"}`` with
    the names of :func:`segment_names` and increasing segment numbers; otherwise ``BundleError``."""
    segments = manifest.get("segments", [])
    why = ("'segments' must be a list of {\"index\": \"segment-NNNNN.faiss\", \"ids\": \"segment-NNNNN.parquet\", "
           "\"items\": n} with increasing numbers")
    if not isinstance(segments, list):
        raise BundleError(MANIFEST_FILE, why)
    last = -1
    for seg in segments:
        name = seg.get("index") if isinstance(seg, dict) else None
        m = SEGMENT_PATTERN.match(name) if isinstance(name, str) else None
        number = int(m.group(1)) if m else -1
        if (m is None or set(seg) != {"index", "ids", "items"} or not _count(seg["items"])
                or (seg["index"], seg["ids"]) != segment_names(number) or number <= last):
            raise BundleError(MANIFEST_FILE, why)
        last = number
    return [dict(s) for s in segments]


def json_document(content: bytes | Mapping[str, Any], name: str, fmt: str) -> dict[str, Any]:
    """A bundle's JSON file (its bytes, or already parsed) as a dict whose ``format`` is ``fmt``; otherwise
    ``BundleError(name, why)``."""
    if isinstance(content, (bytes, bytearray)):
        try:
            content = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(name, f"not valid JSON ({e})") from None
    if not isinstance(content, Mapping):
        raise BundleError(name, "not a JSON object")
    if content.get("format") != fmt:
        raise BundleError(name, f"format is {content.get('format')!r}, expected {fmt!r}")
    return dict(content)


def timestamp() -> str:
    """Now, as the manifests and release records write it (UTC, seconds)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()
