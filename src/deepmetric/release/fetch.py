"""`deepmetric pull NAME --repo URL`: fetch release NAME on an inference host, verify it, install it.

The download goes through DVC's own API (`dvc.api.DVCFileSystem` at the tag: DVC clones the git repository,
reads ``release/bundle.dvc`` and fetches the objects from the DVC remote). Then the checks the server runs on
any bundle (`deepmetric.bundle.load_bundle`: every file's sha256, the manifest's own hash, dimensions),
plus one only a release has: the manifest's sha256 must equal the one in ``release/release.json`` at the tag,
which git, not the remote, holds — so an object altered in the remote is refused even when whoever altered it
also rewrote the manifest's checksums. Nothing lands in ``DEST/NAME`` unless every check passed; ``DEST/current``
then points at it (a symlink swapped atomically). Rolling back is pulling the previous name. A refused pull
leaves ``DEST`` as it was (a ``DEST`` it had to create is removed again); a ``DEST/current`` that is not a
symlink is refused before anything is fetched.

Imports DVC, onnxruntime and faiss; not torch, not Kedro.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepmetric.release.record import RELEASE_BUNDLE, RELEASE_RECORD, ReleaseError, check_name, unusable_remote

CURRENT = "current"
_OVERRIDE = "deepmetric-release"


@dataclass
class Pulled:
    name: str
    path: Path
    record: dict[str, Any]
    manifest: dict[str, Any]
    remote: str


def _fs(repo: str, rev: str, config: dict[str, Any] | None = None):
    import dvc.api

    return dvc.api.DVCFileSystem(repo, rev=rev, config=config)


def _unreachable_repo(repo: str, err: Exception) -> ReleaseError:
    cause = f" ({err.__cause__})" if err.__cause__ is not None else ""
    return ReleaseError("unreachable", f"git repository {repo} unreachable: {err or type(err).__name__}{cause}")


def list_tags(repo: str) -> list[str]:
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    try:
        return sorted(dvc.api.all_tags(repo))
    except RevError as e:  # DVC opens a repository at its default branch (origin/HEAD) to list tags
        raise ReleaseError("unreachable", f"cannot list the tags of {repo}: its default branch does not resolve "
                           f"({e})") from None
    except DvcException as e:
        raise _unreachable_repo(repo, e) from None


def _known_releases(repo: str) -> str:
    """For a refusal message: the tags of ``repo`` that hold a release, or why they could not be listed."""
    try:
        known = [t for t in list_tags(repo) if read_record(repo, t) is not None]
    except Exception as e:  # best effort: the refusal itself is what matters
        return f"its releases could not be listed: {e}"
    return f"its releases: {', '.join(known) or 'none'}"


def read_record(repo: str, name: str) -> dict[str, Any] | None:
    """``release/release.json`` at tag ``name`` (None when that tag is not a release)."""
    fs = _fs(repo, name)
    try:
        return json.loads(fs.read_bytes(RELEASE_RECORD))
    except FileNotFoundError:
        return None
    finally:
        fs.close()


def releases(repo: str) -> list[dict[str, Any]]:
    """The release records of every tag of ``repo`` that holds one, oldest tag name first."""
    from dvc.repo.open_repo import clean_repos

    try:
        out = []
        for tag in list_tags(repo):
            record = read_record(repo, tag)
            if record is not None:
                out.append(record)
        return out
    finally:
        clean_repos()


def _remote_config(fs, record: dict[str, Any], remote: str | None, remote_url: str | None) -> dict[str, Any] | None:
    """DVC config overrides: ``--remote-url`` > ``--remote`` > the repository's default remote > the URL the
    release was pushed to (recorded in release.json; used when the repository's committed config names none)."""
    if remote_url:
        return {"core": {"remote": _OVERRIDE}, "remote": {_OVERRIDE: {"url": remote_url}}}
    if remote:
        return {"core": {"remote": remote}}
    if fs.repo.config["core"].get("remote"):
        return None
    url = (record.get("remote") or {}).get("url")
    if url:
        return {"core": {"remote": _OVERRIDE}, "remote": {_OVERRIDE: {"url": url}}}
    return None


def _check_remote(fs) -> str:
    from dvc.config import NoRemoteError, RemoteConfigError

    try:
        remote = fs.repo.cloud.get_remote()
    except NoRemoteError as e:
        raise ReleaseError("unreachable", f"no DVC remote to fetch from ({e}); pass --remote-url") from None
    except RemoteConfigError as e:  # --remote names none of the repository's remotes
        raise unusable_remote(e, fs.repo.config["remote"], "pass --remote with one of them, or --remote-url "
                              "(without --remote: the repository's default remote, else the URL the release was "
                              "pushed to)") from None
    url = remote.fs.unstrip_protocol(remote.path)
    try:
        ok = remote.fs.exists(remote.path)
    except Exception as e:  # credentials, DNS, refused connections: each filesystem raises its own
        raise ReleaseError("unreachable", f"DVC remote {url} unreachable: {e}") from None
    if not ok:
        raise ReleaseError("unreachable", f"DVC remote {url} unreachable: it does not exist")
    return url


def verify(folder: Path, name: str, record: dict[str, Any]):
    """The bundle's own checks, then: it is release ``name`` and its manifest is the one git recorded."""
    from deepmetric.bundle import BundleError, load_bundle, read_manifest

    manifest = read_manifest(folder)
    want = record.get("manifest_sha256")
    if manifest.get("manifest_sha256") != want:
        raise BundleError("manifest.json", f"checksum mismatch: manifest_sha256 {str(manifest.get('manifest_sha256'))[:16]}… "
                          f"differs from release {name}'s record in git ({str(want)[:16]}…): the copy in the DVC remote "
                          "was altered")
    if manifest.get("release") != name:
        raise BundleError("manifest.json", f"release is {manifest.get('release')!r}, expected {name!r}")
    return load_bundle(folder)


def _check_dest(dest: Path) -> None:
    """``DEST/current`` must be the symlink `pull` maintains (or absent): a real folder there (left by an older
    in-place `gallery add` through the link, or made by hand) is refused before anything is fetched."""
    current = dest / CURRENT
    if os.path.lexists(current) and not current.is_symlink():
        raise ReleaseError("bad_input", f"{current} is a {'folder' if current.is_dir() else 'file'}, not the symlink "
                           f"that pull points at the installed release; nothing was fetched or changed: move it aside "
                           f"(e.g. `mv {current} {dest / 'local'}`) and pull again")


def _install(staged: Path, dest: Path, name: str) -> Path:
    from deepmetric.bundle.writer import point_link
    from deepmetric.io.atomic import atomic_path

    with atomic_path(dest / name) as tmp:
        os.replace(staged, tmp)
    point_link(dest / CURRENT, name)
    return dest / name


def _created(dest: Path) -> Path | None:
    """The outermost folder of ``dest`` that does not exist yet (None: it exists), removed again by a refused pull."""
    first = None
    for folder in (dest, *dest.parents):
        if folder.exists():
            break
        first = folder
    return first


def _remove_created(dest: Path, first: Path | None) -> None:
    """Remove the empty folders a refused pull created, from ``dest`` up to ``first``."""
    if first is None:
        return
    for folder in (dest, *dest.parents):
        try:
            folder.rmdir()
        except OSError:  # not empty (something else was put there meanwhile) or already gone
            return
        if folder == first:
            return


def pull(name: str, repo: str, dest: str | Path, remote: str | None = None, remote_url: str | None = None) -> Pulled:
    """Fetch release ``name`` from ``repo`` (a git URL or path) into ``dest/name`` and point ``dest/current`` at it."""
    from dvc.exceptions import DvcException
    from dvc.repo.open_repo import clean_repos
    from dvc.scm import RevError

    from deepmetric.bundle import BundleError

    check_name(name)
    dest = Path(dest)
    _check_dest(dest)
    created = _created(dest.absolute())
    try:
        try:
            record = read_record(repo, name)
        except RevError:
            raise ReleaseError("unknown_release", f"unknown release {name!r}: {repo} has no tag {name} "
                               f"({_known_releases(repo)})") from None
        except DvcException as e:  # CloneError and the like
            raise _unreachable_repo(repo, e) from None
        if record is None:
            raise ReleaseError("unknown_release", f"{name} of {repo} is not a deepmetric release "
                               f"(no {RELEASE_RECORD} in it; {_known_releases(repo)})")
        if record.get("name") != name:  # a branch or commit that merely contains the record of another release
            raise ReleaseError("unknown_release", f"{name} is not a release tag of {repo}: at {name}, "
                               f"{RELEASE_RECORD} is release {record.get('name')!r} ({_known_releases(repo)})")
        fs = _fs(repo, name)
        config = _remote_config(fs, record, remote, remote_url)
        if config is not None:
            fs.close()
            fs = _fs(repo, name, config)
        try:
            url = _check_remote(fs)
            dest.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".pull", dir=dest))
            try:
                try:
                    fs.get(RELEASE_BUNDLE, str(staging / "bundle"), recursive=True)
                except FileNotFoundError as e:
                    raise ReleaseError("unreachable", f"DVC remote {url} lacks files of release {name} ({e}); was "
                                       "`dvc push` interrupted?") from None
                except (OSError, DvcException) as e:
                    raise ReleaseError("unreachable", f"fetching release {name} from DVC remote {url} failed: {e}") from None
                try:
                    bundle = verify(staging / "bundle", name, record)
                except BundleError as e:
                    raise ReleaseError("checksum", f"release {name} refused: {e}") from None
                manifest = bundle.manifest
                del bundle
                path = _install(staging / "bundle", dest, name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            fs.close()
        return Pulled(name=name, path=path, record=record, manifest=manifest, remote=url)
    except BaseException:
        _remove_created(dest.absolute(), created)  # a refused pull leaves no DEST behind that it made
        raise
    finally:
        clean_repos()
