"""The bundle format: the manifest's canonical hash, how manifest.json is written, which files a manifest declares."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from deepmetric.bundle.format import (
    MANIFEST_FILE,
    PAYLOAD_FILES,
    SHARD_PATTERN,
    BundleError,
    declared_files,
    manifest_bytes,
    manifest_sha256,
    segment_names,
    sha256,
    shard_name,
    short,
    timestamp,
)

MANIFEST = {"format": "deepmetric-bundle/1", "b": [1, 2], "a": {"y": "é", "x": None},
            "files": {"model.onnx": "0" * 64}}


def test_manifest_sha256_is_the_hash_of_the_canonical_json_without_itself():
    canonical = b'{"a":{"x":null,"y":"\\u00e9"},"b":[1,2],"files":{"model.onnx":"' + b"0" * 64 + b'"},' \
                b'"format":"deepmetric-bundle/1"}'
    assert manifest_sha256(MANIFEST) == sha256(canonical)
    reordered = dict(reversed(list(MANIFEST.items())))
    assert manifest_sha256({**reordered, "manifest_sha256": "anything"}) == manifest_sha256(MANIFEST)
    assert manifest_sha256({**MANIFEST, "b": [2, 1]}) != manifest_sha256(MANIFEST)


def test_manifest_bytes_are_indented_sorted_json_with_a_newline():
    data = manifest_bytes(MANIFEST)
    assert data.endswith(b"}\n") and b'\n  "a": {' in data
    assert json.loads(data) == MANIFEST
    assert list(json.loads(data)) == sorted(MANIFEST)


def test_declared_files_are_the_payload_and_the_thumbnail_shards():
    assert declared_files({}) == list(PAYLOAD_FILES) == ["model.onnx", "index.faiss", "ids.parquet"]
    assert declared_files({"thumbnails": None}) == list(PAYLOAD_FILES)
    shards = [shard_name(0), shard_name(1)]
    assert shards == ["thumbnails-00000.parquet", "thumbnails-00001.parquet"]
    assert all(SHARD_PATTERN.match(n) for n in shards)
    assert declared_files({"thumbnails": {"files": shards}}) == [*PAYLOAD_FILES, *shards]


@pytest.mark.parametrize("files", [["../../etc/passwd"], ["thumbnails-1.parquet"], [MANIFEST_FILE], "x", None, [3]])
def test_a_manifest_cannot_declare_other_files(files):
    with pytest.raises(BundleError, match="thumbnails-NNNNN.parquet") as e:
        declared_files({"thumbnails": {"files": files}})
    assert e.value.file == MANIFEST_FILE and str(e.value).startswith("bundle refused: manifest.json: ")


def test_short_and_timestamp():
    assert short("abcdef0123456789") == "abcdef012345" and short(None) == "none" and short("") == "none"
    stamp = dt.datetime.fromisoformat(timestamp())
    assert stamp.tzinfo is not None and stamp.microsecond == 0
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 5


def test_declared_files_include_thresholds_when_the_manifest_declares_them():
    assert declared_files({"thresholds": {"file": "thresholds.json"}}) == [*PAYLOAD_FILES, "thresholds.json"]
    shards = ["thumbnails-00000.parquet"]
    assert declared_files({"thresholds": {"file": "thresholds.json"}, "thumbnails": {"files": shards}}) == [
        *PAYLOAD_FILES, "thresholds.json", *shards]
    for bad in ({"file": "../thresholds.json"}, "thresholds.json", {}):
        with pytest.raises(BundleError, match="manifest.json: 'thresholds' must be"):
            declared_files({"thresholds": bad})


def test_declared_files_include_the_segments_and_the_tombstones():
    seg = {"index": "segment-00001.faiss", "ids": "segment-00001.parquet", "items": 3}
    seg3 = {"index": "segment-00003.faiss", "ids": "segment-00003.parquet", "items": 1}
    manifest = {"segments": [seg, seg3], "tombstones": {"file": "tombstones.parquet", "items": 2},
                "thumbnails": {"files": ["thumbnails-00000.parquet"]}}
    assert declared_files(manifest) == [*PAYLOAD_FILES, "segment-00001.faiss", "segment-00001.parquet",
                                        "segment-00003.faiss", "segment-00003.parquet", "tombstones.parquet",
                                        "thumbnails-00000.parquet"]
    assert segment_names(12) == ("segment-00012.faiss", "segment-00012.parquet")
    bad_segments = [{"segments": {}}, {"segments": [seg3, seg]},  # numbers must increase
                    {"segments": [{**seg, "ids": "segment-00002.parquet"}]},  # one number for both files
                    {"segments": [{**seg, "index": "../x.faiss"}]}, {"segments": [{**seg, "items": -1}]},
                    {"segments": [{**seg, "extra": 1}]}, {"segments": ["segment-00001.faiss"]}]
    for bad in bad_segments:
        with pytest.raises(BundleError, match="'segments' must be a list of"):
            declared_files(bad)
    for bad in ({"file": "x.parquet", "items": 1}, {"file": "tombstones.parquet"}, []):
        with pytest.raises(BundleError, match="'tombstones' must be"):
            declared_files({"tombstones": bad})
