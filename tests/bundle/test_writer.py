"""The one bundle writer: a manifest sealed over its files, the bundle's file set, the atomic folder write (what
the bundle stage, gallery updates and release stamping write through)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from deepmetric.bundle import BundleError, load_bundle
from deepmetric.bundle.format import MANIFEST_FILE, manifest_bytes, manifest_sha256, sha256
from deepmetric.bundle.writer import bundle_files, point_link, restamp, seal, write_bundle

PAYLOAD = {"model.onnx": b"model", "index.faiss": b"index!", "ids.parquet": b"ids"}


def test_seal_lists_the_payload_and_hashes_itself():
    draft = {"format": "deepmetric-bundle/1", "gallery_size": 3, "files": {"stale": "x"}, "manifest_sha256": "old"}
    m = seal(draft, PAYLOAD)
    assert m["files"] == {name: sha256(data) for name, data in PAYLOAD.items()}
    assert m["sizes"] == {"model.onnx": 5, "index.faiss": 6, "ids.parquet": 3}
    assert m["manifest_sha256"] == manifest_sha256(m) != "old"
    assert draft["manifest_sha256"] == "old" and draft["files"] == {"stale": "x"}, "the input is not changed"
    assert seal(m) == m, "sealing a sealed manifest changes nothing"


def test_restamp_sets_fields_and_keeps_the_files():
    m = seal({"format": "deepmetric-bundle/1", "release": None}, PAYLOAD)
    stamped = restamp(m, release="v3", provenance={"git_revision": "c" * 40})
    assert stamped["release"] == "v3" and stamped["provenance"] == {"git_revision": "c" * 40}
    assert stamped["files"] == m["files"] and stamped["sizes"] == m["sizes"]
    assert stamped["manifest_sha256"] == manifest_sha256(stamped) != m["manifest_sha256"]
    assert m["release"] is None


def test_bundle_files_are_the_payload_and_the_manifest():
    m = seal({"format": "deepmetric-bundle/1"}, PAYLOAD)
    files = bundle_files(m, PAYLOAD)
    assert files == {**PAYLOAD, MANIFEST_FILE: manifest_bytes(m)}


def test_bundle_files_refuse_what_would_not_verify():
    m = seal({"format": "deepmetric-bundle/1"}, PAYLOAD)
    with pytest.raises(ValueError, match="not sealed"):
        bundle_files({**m, "gallery_size": 4}, PAYLOAD)
    with pytest.raises(ValueError, match="lists .* the payload holds"):
        bundle_files(m, {**PAYLOAD, "extra.bin": b""})
    with pytest.raises(ValueError, match="lists .* the payload holds"):
        bundle_files(m, {k: v for k, v in PAYLOAD.items() if k != "ids.parquet"})
    sub = {**PAYLOAD, "sub/ids.parquet": PAYLOAD["ids.parquet"]}
    del sub["ids.parquet"]
    with pytest.raises(ValueError, match="plain file names"):
        bundle_files(seal({}, sub), sub)


def test_write_bundle_writes_bytes_and_copies_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "index.faiss").write_bytes(PAYLOAD["index.faiss"])
    m = seal({"format": "deepmetric-bundle/1"}, PAYLOAD)
    dest = write_bundle(tmp_path / "b", m, {**PAYLOAD, "index.faiss": src / "index.faiss"})
    assert sorted(p.name for p in dest.iterdir()) == sorted([*PAYLOAD, MANIFEST_FILE])
    assert {n: (dest / n).read_bytes() for n in PAYLOAD} == PAYLOAD
    assert (dest / MANIFEST_FILE).read_bytes() == manifest_bytes(m)


def test_a_failed_verification_leaves_the_destination_as_it_was(tmp_path):
    dest = tmp_path / "b"
    first = seal({"format": "deepmetric-bundle/1", "n": 1}, PAYLOAD)
    write_bundle(dest, first, PAYLOAD)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    seen = []

    def refuse(folder):
        seen.append(sorted(p.name for p in folder.iterdir()))
        raise BundleError("index.faiss", "refused by the check")

    second = seal({"format": "deepmetric-bundle/1", "n": 2}, {**PAYLOAD, "index.faiss": b"other"})
    with pytest.raises(BundleError, match="refused by the check"):
        write_bundle(dest, second, {**PAYLOAD, "index.faiss": b"other"}, verify=refuse)
    assert seen == [sorted([*PAYLOAD, MANIFEST_FILE])], "the check saw the complete new folder"
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "no temporary left behind"
    write_bundle(dest, second, {**PAYLOAD, "index.faiss": b"other"}, verify=lambda folder: None)
    assert json.loads((dest / MANIFEST_FILE).read_text())["n"] == 2 and (dest / "index.faiss").read_bytes() == b"other"


def test_restamped_copy_of_a_real_bundle_loads(deploy_bundle, tmp_path):
    """Release stamping as `deepmetric publish` does it: the built payload copied, the manifest restamped."""
    built, _, _ = deploy_bundle
    bundle = load_bundle(built)
    m = restamp(bundle.manifest, release="v9", provenance={"git_revision": "0" * 40})
    dest = write_bundle(tmp_path / "release", m, {f: built / f for f in m["files"]}, verify=load_bundle)
    again = load_bundle(dest)
    assert again.manifest["release"] == "v9" and again.manifest["files"] == bundle.manifest["files"]
    # and a payload file that changed since is refused by the check, nothing written
    copy = tmp_path / "changed"
    shutil.copytree(built, copy)
    (copy / "ids.parquet").write_bytes((copy / "ids.parquet").read_bytes() + b"\0")
    with pytest.raises(BundleError, match="ids.parquet: sha256"):
        write_bundle(tmp_path / "release2", m, {f: copy / f for f in m["files"]}, verify=load_bundle)
    assert not (tmp_path / "release2").exists()


def test_write_bundle_refuses_to_replace_a_symlink_by_a_folder(tmp_path):
    m = seal({"format": "deepmetric-bundle/1"}, PAYLOAD)
    write_bundle(tmp_path / "v1", m, PAYLOAD)
    (tmp_path / "current").symlink_to("v1")
    with pytest.raises(ValueError, match="is a symlink"):
        write_bundle(tmp_path / "current", m, PAYLOAD)
    assert os.readlink(tmp_path / "current") == "v1"


def test_point_link_swaps_a_link_and_never_replaces_a_folder_or_file(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    point_link(tmp_path / "current", "v1")  # absent: made
    assert os.readlink(tmp_path / "current") == "v1"
    point_link(tmp_path / "current", "v2")  # a link: repointed
    assert os.readlink(tmp_path / "current") == "v2"
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "keep.txt").write_text("keep")
    (tmp_path / "file").write_text("keep")
    for name in ("folder", "file"):
        with pytest.raises(FileExistsError, match=f"{name} is a {name}, not a symlink"):
            point_link(tmp_path / name, "v1")
    assert (tmp_path / "folder" / "keep.txt").read_text() == "keep" and (tmp_path / "file").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "file", "folder", "v1", "v2"], "no link left"


def test_link_shares_a_file_and_copies_it_across_file_systems(tmp_path):
    """``link=True``: a payload path becomes a hard link (same inode) on the same file system, a copy where a link
    cannot be made (the tmpfs of /dev/shm is another file system than the test's folder, where there is one)."""
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    manifest = seal({"format": "t"}, {"a.bin": b"x" * 1000})
    out = write_bundle(tmp_path / "b", manifest, {"a.bin": src}, link=True)
    assert (out / "a.bin").stat().st_ino == src.stat().st_ino and src.stat().st_nlink == 2
    assert write_bundle(tmp_path / "c", manifest, {"a.bin": src}).joinpath("a.bin").stat().st_ino != src.stat().st_ino
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system to link across")
    other = tmp_path.name + "-" + str(os.getpid())
    try:
        out = write_bundle(os.path.join(shm, other), manifest, {"a.bin": src}, link=True)
        assert (out / "a.bin").read_bytes() == src.read_bytes() and (out / "a.bin").stat().st_nlink == 1
    finally:
        shutil.rmtree(os.path.join(shm, other), ignore_errors=True)
