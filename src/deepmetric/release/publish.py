"""`deepmetric publish NAME`: the current, committed pipeline state becomes release NAME.

1. Refuse unless it is releasable: tracked files committed (HEAD names the code, parameters and dvc.lock that
   built the bundle), `dvc status` of the bundle stage and everything upstream clean, the bundle verifies,
   the tag is new.
2. `dvc push` the pipeline's outputs to the DVC remote (so `git checkout NAME && dvc pull` restores them).
3. Stamp a copy of the bundle: ``release/bundle`` = the built bundle with ``release`` and ``provenance`` (git
   revision, the bundle stage's dvc.lock hash, the data version, the training parameters and metrics) in its
   manifest; `dvc add` it and `dvc push` it; write the git-tracked record ``release/release.json``.
4. `git commit` release/ and `git tag -a NAME`; with ``git_remote``, `git push` the branch and the tag.

Runs on the build machine (it needs DVC and git; not torch beyond what verifying the bundle imports).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deepmetric.bundle.format import timestamp
from deepmetric.release.provenance import provenance
from deepmetric.release.record import (
    BUILD_BUNDLE,
    METRICS_FILE,
    RECORD_FORMAT,
    RELEASE_BUNDLE,
    RELEASE_DIR,
    RELEASE_RECORD,
    ReleaseError,
    check_name,
    summary,
    unusable_remote,
)


@dataclass
class Published:
    record: dict[str, Any]
    commit: str
    pushed_to: str | None  # the git remote the tag was pushed to, if any


def _git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ReleaseError("not_ready", f"git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout.strip()


def _changed_files(root: Path) -> list[str]:
    """The tracked files with uncommitted changes, as git names them (``git status --porcelain -z``: entries
    ``XY PATH``, a rename's old path as the entry after it; read unstripped, so the first entry keeps its
    status columns)."""
    proc = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReleaseError("not_ready", f"git status failed: {proc.stderr.strip()}")
    entries, files = iter(proc.stdout.split("\0")), []
    for entry in entries:
        if len(entry) > 3:
            files.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)  # the old path of a rename or copy
    return files


def _check_git(root: Path, name: str, git_remote: str | None) -> str:
    if _git(root, "rev-parse", "--is-inside-work-tree", check=False) != "true":
        raise ReleaseError("not_ready", f"{root} is not a git work tree")
    head = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False)
    if not head:
        raise ReleaseError("not_ready", "the repository has no commit yet: commit the pipeline first")
    existing = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{name}", check=False)
    if existing:
        raise ReleaseError("not_ready", f"release {name} exists (tag {name} at {existing[:12]}); releases are "
                           "immutable: publish under a new name")
    if git_remote and _git(root, "ls-remote", "--tags", git_remote, f"refs/tags/{name}"):
        raise ReleaseError("not_ready", f"tag {name} already exists on git remote {git_remote!r}")
    files = _changed_files(root)
    if files:
        raise ReleaseError("not_ready", f"uncommitted changes to tracked files ({', '.join(files[:8])}"
                           f"{', …' if len(files) > 8 else ''}): commit them (and dvc.lock) first, so the release "
                           "names the revision that built it")
    return head


def _check_pipeline(repo: Any, stage: str) -> None:
    status = repo.status(targets=[stage], with_deps=True)
    if status:
        changed = "; ".join(f"{k}: {v}" for k, v in list(status.items())[:6])
        raise ReleaseError("not_ready", f"the pipeline is not up to date with dvc.lock ({changed}): run "
                           "`dvc repro`, commit dvc.lock, then publish")


def _remote_url(repo: Any, remote: str | None) -> dict[str, str]:
    from dvc.config import NoRemoteError, RemoteConfigError

    try:
        r = repo.cloud.get_remote(remote, "push")
    except NoRemoteError as e:
        raise ReleaseError("unreachable", f"no DVC remote to publish to ({e}); add one, e.g. `dvc remote add -d "
                           "store /srv/deepmetric-store` (a local folder; s3://, ssh://, gs:// likewise)") from None
    except RemoteConfigError as e:  # --remote names none of the configured remotes
        raise unusable_remote(e, repo.config["remote"], "nothing was published") from None
    return {"name": r.name, "url": r.fs.unstrip_protocol(r.path)}


def _push(repo: Any, remote: str | None, where: dict[str, str], targets: list[str] | None = None) -> None:
    from dvc.exceptions import DvcException

    try:
        repo.push(targets=targets, remote=remote)
    except (DvcException, OSError) as e:  # a local remote that is not a writable folder raises plain OSErrors
        raise ReleaseError("unreachable", f"dvc push to remote {where['name']!r} ({where['url']}) failed: {e}") from None


def _stamp(root: Path, name: str, prov: dict[str, Any]) -> dict[str, Any]:
    """Write release/bundle: the built bundle's payload + its manifest with ``release`` and ``provenance``."""
    from deepmetric.bundle import load_bundle
    from deepmetric.bundle.writer import restamp, write_bundle

    built = root / BUILD_BUNDLE
    try:
        bundle = load_bundle(built)
    except ValueError as e:  # BundleError
        raise ReleaseError("not_ready", f"{BUILD_BUNDLE} does not verify: {e}") from None
    manifest = restamp(bundle.manifest, release=name, provenance=prov)
    # every file the manifest lists (model, index, ids, thumbnail shards, …), copied as built
    write_bundle(root / RELEASE_BUNDLE, manifest, {f: built / f for f in manifest["files"]})
    return manifest


def _snapshot(root: Path) -> dict[Path, bytes | None]:
    files = [root / f"{RELEASE_BUNDLE}.dvc", root / RELEASE_RECORD, root / RELEASE_DIR / ".gitignore"]
    return {p: (p.read_bytes() if p.exists() else None) for p in files}


def _restore(root: Path, snap: dict[Path, bytes | None], repo: Any) -> None:
    for path, data in snap.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)
    dvcfile = root / f"{RELEASE_BUNDLE}.dvc"
    if snap[dvcfile] is None:
        shutil.rmtree(root / RELEASE_BUNDLE, ignore_errors=True)
    else:
        try:
            repo.checkout(targets=[str(dvcfile)], force=True)
        except Exception:  # best effort: the files above are what git sees
            pass


def publish(root: str | Path = ".", name: str = "", remote: str | None = None, git_remote: str | None = None,
            message: str | None = None) -> Published:
    """Publish the committed pipeline state of the repository at ``root`` as release ``name``."""
    from dvc.repo import Repo

    root = Path(root).resolve()
    check_name(name)
    head = _check_git(root, name, git_remote)
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        raise ReleaseError("not_ready", "no dvc.lock: run `dvc repro` and commit dvc.lock")
    lock = yaml.safe_load(lock_path.read_text())
    metrics_path = root / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    with Repo(str(root)) as repo:
        prov = provenance(lock, head, metrics)
        _check_pipeline(repo, prov["dvc"]["stage"])
        where = _remote_url(repo, remote)
        _push(repo, remote, where)  # the pipeline's outputs at this revision, before anything is changed
        snap = _snapshot(root)
        try:
            manifest = _stamp(root, name, prov)
            repo.add([RELEASE_BUNDLE])
            dvc_md5 = yaml.safe_load((root / f"{RELEASE_BUNDLE}.dvc").read_text())["outs"][0]["md5"]
            record = {
                "format": RECORD_FORMAT,
                "name": name,
                "created": timestamp(),
                "bundle": RELEASE_BUNDLE,
                "bundle_md5": dvc_md5,
                "manifest_sha256": manifest["manifest_sha256"],
                "model_version": manifest["model_version"],
                "index_version": manifest["index_version"],
                "method": manifest.get("method"),
                "dataset": manifest.get("dataset"),
                "git_revision": head,
                "stage_hash": prov["dvc"]["stage_hash"],
                "data": prov["data"],
                "metrics": prov["metrics"],
                "remote": where,
            }
            (root / RELEASE_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            _push(repo, remote, where, targets=[RELEASE_BUNDLE])
            _git(root, "add", "--", f"{RELEASE_BUNDLE}.dvc", RELEASE_RECORD, f"{RELEASE_DIR}/.gitignore")
            line = summary(record)
            _git(root, "commit", "-q", "-m", f"release {line}", "--", f"{RELEASE_BUNDLE}.dvc", RELEASE_RECORD,
                 f"{RELEASE_DIR}/.gitignore")
        except BaseException:
            _restore(root, snap, repo)
            _git(root, "reset", "-q", "--", RELEASE_DIR, check=False)
            raise
    commit = _git(root, "rev-parse", "HEAD")
    body = message or json.dumps({k: record[k] for k in ("model_version", "index_version", "git_revision",
                                                          "stage_hash", "metrics")}, indent=2, sort_keys=True)
    _git(root, "tag", "-a", name, "-m", f"deepmetric release {line}\n\n{body}")
    pushed = None
    if git_remote:
        branch = _git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
        refs = ([f"HEAD:refs/heads/{branch}"] if branch else []) + [f"refs/tags/{name}"]
        proc = subprocess.run(["git", "push", "-q", git_remote, *refs], cwd=root, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReleaseError("unreachable", f"release {name} is tagged locally ({commit[:12]}) and its files are on "
                               f"the DVC remote, but `git push {git_remote}` failed: {proc.stderr.strip()}; push "
                               f"it with `git push {git_remote} {branch or 'HEAD'} {name}`")
        pushed = git_remote
    return Published(record=record, commit=commit, pushed_to=pushed)
