"""The provenance read from a dvc.lock (deepmetric.release.provenance; pure functions, the real DVC/git cycle is
in test_publish.py)."""

from __future__ import annotations

import pytest

from deepmetric.release.provenance import data_version, path_hash, provenance, stage_hash
from deepmetric.release.record import ReleaseError


def _lock(root="data/01_raw/glyphs"):
    return {"schema": "2.0", "stages": {
        "glyphs": {"cmd": "kedro run --pipelines glyphs", "outs": [
            {"path": "data/01_raw/glyphs", "hash": "md5", "md5": "aa.dir", "size": 10, "nfiles": 3}]},
        "ingest": {"cmd": "kedro run --pipelines ingest",
                   "deps": [{"path": root, "hash": "md5", "md5": "aa.dir" if root.startswith("data/") else "bb.dir",
                             "size": 10, "nfiles": 3}],
                   "params": {"conf/base/parameters_ingest.yml": {"data": {"dataset": "glyphs", "root": root}}},
                   "outs": [{"path": "data/02_intermediate/manifest.parquet", "hash": "md5", "md5": "m0", "size": 1}]},
        "validate": {"cmd": "kedro run --pipelines validate",
                     "outs": [{"path": "data/02_intermediate/manifest_validated.parquet", "hash": "md5", "md5": "m1",
                               "size": 1}]},
        "train": {"cmd": "kedro run --pipelines train",
                  "params": {"conf/base/parameters_train.yml": {"train": {"method": "margin"}, "model": {"crop": 64}},
                             "conf/base/parameters_preset.yml": {"preset": {"name": None}}}},
        "bundle": {"cmd": "kedro run --pipelines bundle",
                   "deps": [{"path": "data/06_models/model.onnx", "hash": "md5", "md5": "o1", "size": 5}],
                   "params": {"conf/base/parameters_bundle.yml": {"bundle": {"release": None}}},
                   "outs": [{"path": "data/09_deploy/bundle", "hash": "md5", "md5": "b1.dir", "size": 9, "nfiles": 4}]},
    }}


def test_provenance_from_lock():
    lock = _lock()
    prov = provenance(lock, "c" * 40, {"map@r": 0.5})
    assert prov["git_revision"] == "c" * 40
    assert prov["dvc"] == {"stage": "bundle", "stage_hash": stage_hash(lock["stages"]["bundle"]),
                           "out": "data/09_deploy/bundle", "out_md5": "b1.dir"}
    assert prov["data"] == {"dataset": "glyphs", "root": "data/01_raw/glyphs", "root_md5": "aa.dir", "files": 3,
                            "manifest": "data/02_intermediate/manifest_validated.parquet", "manifest_md5": "m1"}
    assert prov["params"] == {"train": {"method": "margin"}, "model": {"crop": 64}, "preset": {"name": None}}
    assert prov["metrics"] == {"map@r": 0.5}


def test_stage_hash_follows_inputs_not_sizes():
    a = _lock()["stages"]["bundle"]
    b = _lock()["stages"]["bundle"]
    b["outs"][0]["md5"] = "another-output.dir"   # the key covers inputs and out paths, not out hashes
    b["deps"][0]["size"] = 123                    # nor sizes (DVC excludes them)
    assert stage_hash(a) == stage_hash(b)
    c = _lock()["stages"]["bundle"]
    c["deps"][0]["md5"] = "o2"
    assert stage_hash(c) != stage_hash(a)


def test_external_dataset_root_is_versioned_by_its_ingest_dependency():
    lock = _lock(root="/data/CUB_200_2011")
    assert data_version(lock, "cub")["root_md5"] == "bb.dir"
    assert path_hash(lock, "/nowhere") is None


def test_incomplete_lock_is_not_ready():
    lock = _lock()
    del lock["stages"]["bundle"]
    with pytest.raises(ReleaseError, match="no stage writing data/09_deploy/bundle") as e:
        provenance(lock, "c" * 40, {})
    assert e.value.exit_code == 6
    lock = _lock()
    del lock["stages"]["validate"]
    with pytest.raises(ReleaseError, match="manifest_validated.parquet"):
        provenance(lock, "c" * 40, {})
    with pytest.raises(ReleaseError, match="no stages"):
        provenance({}, "c" * 40, {})
