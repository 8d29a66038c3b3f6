"""The one writer of bundles: seal a manifest over the files it lists, lay the bundle out, write it atomically.

Every bundle comes from here — the `bundle` stage (:func:`deepmetric.bundle.build.build_bundle`, whose
``{name: bytes}`` the catalog's ``FileTreeDataset`` writes), gallery updates
(:func:`deepmetric.bundle.gallery.update_gallery`, which hard-links the files it does not change) and release
stamping (`deepmetric publish`) — so the manifest's ``files`` / ``sizes`` / ``manifest_sha256`` are computed in
one place and a new kind of bundle file is added in one place.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deepmetric.bundle.format import MANIFEST_FILE, manifest_bytes, manifest_sha256, sha256

__all__ = ["bundle_files", "point_link", "restamp", "seal", "write_bundle"]

#: A file's content, or the path of an existing file to copy (a release copies the built bundle's payload).
Content = bytes | os.PathLike[str]


def seal(manifest: Mapping[str, Any], payload: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """A copy of ``manifest`` that lists ``payload`` (every file of the bundle but manifest.json: its sha256
    under ``files``, its size under ``sizes``) and carries its own ``manifest_sha256``. Without ``payload`` the
    listed files stay as they are."""
    out = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if payload is not None:
        out["files"] = {name: sha256(data) for name, data in payload.items()}
        out["sizes"] = {name: len(data) for name, data in payload.items()}
    out["manifest_sha256"] = manifest_sha256(out)
    return out


def restamp(manifest: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of ``manifest`` with ``fields`` set, sealed again. Releases use it to add their name and provenance
    to a built bundle's manifest; the payload files and their sha256 stay as built."""
    return seal({**manifest, **fields})


def bundle_files(manifest: Mapping[str, Any], payload: Mapping[str, Content]) -> dict[str, Content]:
    """The bundle as ``{file name: content}``: ``payload`` and manifest.json. ``manifest`` must be sealed and
    list exactly the files of ``payload`` (a mismatch is a bug in the caller: ``ValueError``)."""
    if manifest.get("manifest_sha256") != manifest_sha256(manifest):
        raise ValueError("the manifest is not sealed: pass it through deepmetric.bundle.writer.seal")
    listed = set(manifest.get("files") or {})
    if listed != set(payload):
        raise ValueError(f"the manifest lists {sorted(listed)}, the payload holds {sorted(payload)}")
    if MANIFEST_FILE in payload or any(Path(name).name != name for name in payload):
        raise ValueError(f"payload names must be plain file names other than {MANIFEST_FILE}: {sorted(payload)}")
    return {**payload, MANIFEST_FILE: manifest_bytes(manifest)}


def write_bundle(dest: str | os.PathLike[str], manifest: Mapping[str, Any], payload: Mapping[str, Content], *,
                 verify: Callable[[Path], Any] | None = None, link: bool = False) -> Path:
    """Write the bundle (``payload`` + manifest.json) as the folder ``dest``, replacing what is there atomically.
    ``link``: a payload given as a path is hard-linked, not copied (a gallery update shares the unchanged files of
    the version it came from; bundle files are never written in place, so the versions stay independent), and
    copied where the link fails (another file system, no link support).
    ``verify(folder)`` runs on the complete new folder before it takes the name: if it raises, ``dest`` is left
    exactly as it was and nothing else remains. ``dest`` must not be a symlink (the rename would replace the link
    by a folder): write the folder it points at, or a new one and :func:`point_link` (a caller's bug:
    ``ValueError``)."""
    from deepmetric.io.atomic import atomic_path

    files = bundle_files(manifest, payload)
    dest = Path(dest)
    if dest.is_symlink():
        raise ValueError(f"{dest} is a symlink: write the new version to a folder, then point_link() the link at it")
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for name, content in files.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                _place(Path(content), tmp / name, link)
        if verify is not None:
            verify(tmp)
    return dest


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system, or one without hard links: copy
    shutil.copyfile(src, dst)


def point_link(link: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Make ``link`` a symlink to ``target`` (the link's text, as ``ln -s`` takes it) atomically: a new link made
    beside it is renamed over it, so a reader of ``link`` sees the old target or the new one, never none. ``link``
    must be a symlink or absent: a real file or folder there is left untouched (``FileExistsError``). No temporary
    link remains either way."""
    link = Path(link)
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    try:
        if os.path.lexists(link) and not link.is_symlink():
            raise FileExistsError(f"{link} is a {'folder' if link.is_dir() else 'file'}, not a symlink")
        os.replace(tmp, link)
    finally:
        tmp.unlink(missing_ok=True)
    return link
