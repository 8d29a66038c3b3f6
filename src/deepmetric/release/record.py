"""What both sides of a release agree on: where a release lives in the repository, what a valid name is,
the release record, and the one error type (with its exit status) every refusal raises."""

from __future__ import annotations

import re
from typing import Any

# The bundle stage's output (conf/base/catalog.yml `deploy_bundle`, dvc.yaml `bundle`).
BUILD_BUNDLE = "data/09_deploy/bundle"
# The metrics the bundle was accepted on (the `evaluate` stage's DVC metrics file).
METRICS_FILE = "data/08_reporting/metrics.json"
# A release in the repository: the stamped bundle, tracked by DVC (release/bundle.dvc), and its record, tracked
# by git (release/release.json) — the git side pins the manifest's sha256, so the remote's copy can be checked.
RELEASE_DIR = "release"
RELEASE_BUNDLE = "release/bundle"
RELEASE_RECORD = "release/release.json"
RECORD_FORMAT = "deepmetric-release/1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

# Exit statuses of the release commands (2 and 3 are every command's: bad bundle, bad input; deepmetric.cli.common).
EXIT = {
    "checksum": 2,            # the fetched bundle fails its checks (sha256, manifest, dimensions)
    "bad_input": 3,           # a malformed release name or argument
    "unknown_release": 4,     # no such tag, or the tag holds no release
    "unreachable": 5,         # the git repository or the DVC remote cannot be reached, or lacks the release's files
    "not_ready": 6,           # publish: uncommitted changes, a stale pipeline, an existing tag
}


class ReleaseError(Exception):
    """A refused publish or pull. ``kind`` is one of `EXIT`'s keys; the message names what is wrong."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in EXIT:
            raise ValueError(f"unknown ReleaseError kind {kind!r}")
        self.kind = kind
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return EXIT[self.kind]


def check_name(name: str) -> str:
    """A release name is a git tag name without slashes: ``v3``, ``v1.2.0``, ``2026-11-rc1``."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name or name.endswith((".lock", ".")):
        raise ReleaseError("bad_input", f"release name {name!r} is not valid: use letters, digits, '.', '_', '-' "
                           "(a git tag name without '/', starting with a letter or digit), e.g. v3")
    return name


def summary(record: dict[str, Any]) -> str:
    """One line: name, method/dataset, the headline metrics, model and index versions."""
    metrics = record.get("metrics") or {}
    shown = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("map@r", "recall@1", "nmi") if isinstance(metrics.get(k), float | int))
    return (f"{record.get('name')}: {record.get('method')} on {record.get('dataset')}"
            f"{' (' + shown + ')' if shown else ''}, model {record.get('model_version')}, "
            f"index {record.get('index_version')}, built from {str(record.get('git_revision'))[:12]}")


def unusable_remote(err: Exception, known, hint: str) -> ReleaseError:
    """The refusal of a DVC remote that is not configured (``--remote nosuch``): DVC's words, the remotes there are."""
    names = ", ".join(sorted(known)) or "none"
    return ReleaseError("unreachable", f"DVC remote unusable: {str(err).removeprefix('config file error: ')} "
                        f"(configured remotes: {names}); {hint}")
