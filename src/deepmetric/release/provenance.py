"""Where a bundle came from, read from the committed dvc.lock and git: the revision, the hash of the stage
that wrote the bundle, and the version of the data it was trained and indexed on.

``stage_hash`` is DVC's own hash of a stage's lock entry (command, dependencies with their hashes, parameters,
output paths): the key of DVC's run cache (``.dvc/cache/runs/<key[:2]>/<key>``), computed with DVC's function, so
two bundles with the same ``stage_hash`` were built by the same command from byte-identical inputs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from deepmetric.release.record import BUILD_BUNDLE, ReleaseError

INGEST_PARAMS = "conf/base/parameters_ingest.yml"
TRAIN_PARAMS = "conf/base/parameters_train.yml"
PRESET_PARAMS = "conf/base/parameters_preset.yml"  # preset.name set: train/model come from conf/presets/<name>.yml
VALIDATED_MANIFEST = "data/02_intermediate/manifest_validated.parquet"


def _entries(lock: Mapping[str, Any]) -> Mapping[str, Any]:
    stages = lock.get("stages") if isinstance(lock, Mapping) else None
    if not isinstance(stages, Mapping):
        raise ReleaseError("not_ready", "dvc.lock has no stages: run `dvc repro` and commit dvc.lock")
    return stages


def stage_writing(lock: Mapping[str, Any], path: str) -> tuple[str, dict[str, Any]]:
    """The (name, lock entry) of the stage whose ``outs`` include ``path``."""
    for name, entry in _entries(lock).items():
        if any(o.get("path") == path for o in entry.get("outs", [])):
            return name, entry
    raise ReleaseError("not_ready", f"dvc.lock has no stage writing {path}: run `dvc repro` and commit dvc.lock")


def stage_hash(entry: Mapping[str, Any]) -> str:
    """DVC's hash of a lock entry (its run-cache key): sha256 over cmd, deps, params and out paths."""
    from dvc.stage.cache import _get_cache_hash

    return _get_cache_hash(copy.deepcopy(dict(entry)), key=True)


def path_hash(lock: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The hash dvc.lock records for ``path`` (as a dep or an out of any stage): md5, size, nfiles."""
    for entry in _entries(lock).values():
        for item in [*entry.get("outs", []), *entry.get("deps", [])]:
            if item.get("path") == path and item.get("md5"):
                return {k: item[k] for k in ("md5", "size", "nfiles") if k in item}
    return None


def stage_params(lock: Mapping[str, Any], params_file: str) -> dict[str, Any]:
    """The values of ``params_file`` recorded in dvc.lock (merged over every stage that reads it)."""
    out: dict[str, Any] = {}
    for entry in _entries(lock).values():
        out.update(entry.get("params", {}).get(params_file, {}) or {})
    return out


def data_version(lock: Mapping[str, Any], dataset: str | None) -> dict[str, Any]:
    """The dataset root (``data.root``) and the validated manifest, each with the hash dvc.lock records."""
    data = stage_params(lock, INGEST_PARAMS).get("data") or {}
    root = data.get("root")
    if not root:
        raise ReleaseError("not_ready", f"dvc.lock records no data.root ({INGEST_PARAMS}): run `dvc repro`")
    root_hash = path_hash(lock, root)
    manifest_hash = path_hash(lock, VALIDATED_MANIFEST)
    if root_hash is None or manifest_hash is None:
        missing = root if root_hash is None else VALIDATED_MANIFEST
        raise ReleaseError("not_ready", f"dvc.lock has no hash of {missing}: run `dvc repro` and commit dvc.lock")
    return {
        "dataset": dataset or data.get("dataset"),
        "root": root,
        "root_md5": root_hash["md5"],
        "files": root_hash.get("nfiles"),
        "manifest": VALIDATED_MANIFEST,
        "manifest_md5": manifest_hash["md5"],
    }


def provenance(lock: Mapping[str, Any], git_revision: str, metrics: Mapping[str, Any] | None,
               dataset: str | None = None) -> dict[str, Any]:
    """The ``provenance`` block of a release manifest."""
    name, entry = stage_writing(lock, BUILD_BUNDLE)
    out = next(o for o in entry["outs"] if o.get("path") == BUILD_BUNDLE)
    train = {**stage_params(lock, TRAIN_PARAMS), **stage_params(lock, PRESET_PARAMS)}
    return {
        "git_revision": git_revision,
        "dvc": {"stage": name, "stage_hash": stage_hash(entry), "out": BUILD_BUNDLE, "out_md5": out.get("md5")},
        "data": data_version(lock, dataset),
        "params": {k: train[k] for k in ("train", "model", "preset") if k in train},
        "metrics": dict(metrics or {}),
    }
