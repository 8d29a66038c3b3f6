"""`deepmetric gallery add|remove` on a real bundle (tests/cli/conftest.py): a new version, ids stable, refusals
as messages with exit 3 (bad input) or 2 (bundle refused). The update itself: tests/bundle/test_gallery.py."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from deepmetric.bundle import load_bundle
from tests.deploy_fixtures import draw_image
from tests.fixtures import file_tree, png_bytes
from tests.server_fixtures import deepmetric, deepmetric_here


@pytest.fixture(scope="module")
def new(tmp_path_factory):
    """Three new images of class 7."""
    folder = tmp_path_factory.mktemp("new")
    for i in range(3):
        (folder / f"n{i}.png").write_bytes(png_bytes(draw_image(7, 50 + i, (44, 40))))
    return folder


def test_gallery_cli(env, new, tmp_path):
    _, _, _, src = env
    dest = tmp_path / "b"
    listing = tmp_path / "items.csv"
    shutil.copy(new / "n0.png", tmp_path / "a.png")
    listing.write_text("path,label,class_name\na.png,42,answer\n")

    def cli(*args):
        return deepmetric("gallery", *args)

    proc = cli("add", "--bundle", str(src), "--out", str(dest), "--list", str(listing), "--label", "7",
               str(new / "n2.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["added_ids"] == [36, 37] and out["gallery_version"] == 1
    ids = load_bundle(dest).ids
    assert list(ids["path"].iloc[36:]) == [str(new / "n2.png"), "a.png"] and ids["class_name"].iloc[37] == "answer"
    proc = cli("remove", "--bundle", str(dest), "--id", "36", "--id", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["removed_ids"] == [0, 36]
    proc = cli("remove", "--bundle", str(dest), "--id", "0")
    assert proc.returncode == 3 and "no gallery item has id [0]" in proc.stderr
    proc = cli("add", "--bundle", str(dest), str(new / "n2.png"))
    assert proc.returncode == 3 and "--label" in proc.stderr
    assert np.array_equal(load_bundle(dest).ids["id"].to_numpy(), [*range(1, 36), 37])


def test_bad_lists_limits_and_bundles_change_nothing(env, new, tmp_path):
    _, _, _, src = env
    out = tmp_path / "out"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,notint\n")
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(out), "--list", str(bad))
    assert proc.returncode == 3 and f"{bad}:2: needs columns path,label[,class_name] with an integer label" in proc.stderr
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(out), "--list", str(tmp_path / "no.csv"))
    assert proc.returncode == 3 and "cannot read" in proc.stderr and "no.csv" in proc.stderr
    # the limit flags become the update's ImageLimits: a 44×40 image is refused at 1.05:1, naming the parameter
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(out), "--label", "7",
                           str(new / "n0.png"), "--max-aspect-ratio", "1.05")
    assert proc.returncode == 3 and "gallery not changed" in proc.stderr and "(parameter max_aspect_ratio)" in proc.stderr
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(out), "--label", "7",
                           str(new / "n0.png"), "--max-aspect-ratio", "0.5")
    assert proc.returncode == 3 and "invalid setting" in proc.stderr and "max_aspect_ratio" in proc.stderr
    proc = deepmetric_here("gallery", "remove", "--bundle", str(tmp_path), "--id", "1")
    assert proc.returncode == 2 and "bundle refused: manifest.json: missing" in proc.stderr
    assert not out.exists()


def test_out_replaces_nothing_but_an_older_bundle_version_and_only_when_asked(env, tmp_path):
    """`--out DEST` deleted what was at DEST, exit 0 (issue 23): a user's folder, a file. Now only a path that does
    not exist, or a bundle folder with --replace; anything else is refused (exit 3) and left byte for byte."""
    _, _, _, src = env
    users = tmp_path / "x" / "p"
    users.mkdir(parents=True)
    (users / "thesis.txt").write_text("keep\n")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    for dest, words in ((users, "is not a bundle folder (no deepmetric manifest.json)"), (a_file, "is a file")):
        for extra in ((), ("--replace",)):
            proc = deepmetric_here("gallery", "remove", "--bundle", str(src), "--id", "5", "--out", str(dest), *extra)
            assert proc.returncode == 3, proc.stderr
            assert f"gallery not changed: the destination {dest} exists and {words}: it is left as it is" in proc.stderr
    assert file_tree(users) == {str(users / "thesis.txt"): b"keep\n"} and a_file.read_text() == "mine\n"

    older = tmp_path / "older"
    shutil.copytree(src, older)
    before = file_tree(older)
    proc = deepmetric_here("gallery", "remove", "--bundle", str(src), "--id", "5", "--out", str(older))
    assert proc.returncode == 3 and "holds another bundle version: pass --replace" in proc.stderr
    assert file_tree(older) == before
    (older / "notes.txt").write_text("mine\n")  # a bundle folder someone keeps a file in is not replaced either
    proc = deepmetric_here("gallery", "remove", "--bundle", str(src), "--id", "5", "--out", str(older), "--replace")
    assert proc.returncode == 3 and "holds files that are not the bundle's (notes.txt)" in proc.stderr
    assert file_tree(older) == {**before, str(older / "notes.txt"): b"mine\n"}
    (older / "notes.txt").unlink()
    proc = deepmetric_here("gallery", "remove", "--bundle", str(src), "--id", "5", "--out", str(older), "--replace")
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(older).gallery_size == 35 and 5 not in set(load_bundle(older).ids["id"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "older", "x"], "no temporary left behind"


def test_an_update_through_a_symlink_repoints_it_at_a_new_folder(env, new, tmp_path):
    """An in-place update of `releases/current` (a symlink, as `deepmetric pull` makes it) replaced the link with a
    folder (issue 23). Now the new version is a folder beside the link's target and the link is repointed at it;
    the old version stays as it was, for rollback."""
    _, _, _, src = env
    releases = tmp_path / "releases"
    releases.mkdir()
    shutil.copytree(src, releases / "v3")
    before = file_tree(releases / "v3")
    current = releases / "current"
    current.symlink_to("v3")
    proc = deepmetric_here("gallery", "add", "--bundle", str(current), "--label", "7", str(new / "n0.png"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bundle"] == str(current) and out["folder"] == str(releases / "v3-g1")
    assert f"new version written to {releases / 'v3-g1'}; {current} now points at it" in proc.stderr
    assert current.is_symlink() and os.readlink(current) == "v3-g1"
    assert load_bundle(current).manifest["lineage"]["gallery_version"] == 1 and file_tree(releases / "v3") == before
    proc = deepmetric_here("gallery", "remove", "--bundle", str(current), "--id", str(out["added_ids"][0]))
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(current) == "v3-g2" and load_bundle(current).gallery_size == 36
    # --out naming the link, with --replace: the same (a link is never replaced by a folder)
    proc = deepmetric_here("gallery", "remove", "--bundle", str(releases / "v3"), "--id", "0", "--out", str(current),
                           "--replace")
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(current) == "v3-g1-" + json.loads(proc.stdout)["manifest_sha256"][:12]  # v3-g1 is taken
    assert sorted(p.name for p in releases.iterdir()) == sorted(
        ["current", "v3", "v3-g1", "v3-g2", os.readlink(current)]), "no temporary left behind"


def test_the_same_image_twice_is_refused_unless_allowed(env, new, tmp_path):
    """The same image given twice to `gallery add` was added silently under two ids (issue 23)."""
    _, _, _, src = env
    dest = tmp_path / "b"
    n0 = str(new / "n0.png")
    copy = tmp_path / "copy-of-n0.png"
    shutil.copy(n0, copy)
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(dest), "--label", "7", n0, str(copy))
    assert proc.returncode == 3 and not dest.exists()
    assert (f"{copy} is the same image as {n0}, given before it: nothing was added; pass --allow-duplicates"
            in proc.stderr)
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(dest), "--label", "7", n0)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["duplicates"] == []
    proc = deepmetric_here("gallery", "add", "--bundle", str(dest), "--label", "7", str(copy), str(new / "n1.png"))
    assert proc.returncode == 3 and f"{copy} is the same image as gallery item 36" in proc.stderr
    assert load_bundle(dest).gallery_size == 37
    # removing the item in the same update makes the image new again
    proc = deepmetric_here("gallery", "remove", "--bundle", str(dest), "--out", str(tmp_path / "c"), "--id", "36")
    assert proc.returncode == 0, proc.stderr
    proc = deepmetric_here("gallery", "add", "--bundle", str(dest), "--label", "7", str(copy), "--allow-duplicates")
    assert proc.returncode == 0, proc.stderr
    assert (f"added 1 duplicate image(s) (--allow-duplicates): {copy} is the same image as gallery item 36"
            in proc.stderr)
    assert json.loads(proc.stdout)["duplicates"] == [{"image": str(copy), "same_as_id": 36}]
    assert load_bundle(dest).gallery_size == 38


def test_gallery_export_then_add_and_remove_in_the_store(env, new, deploy_bundle, tmp_path):
    """`gallery export --to x.db`, then `add|remove --store`: the collection changes, the bundle does not."""
    _, _, _, src = env
    uri = str(tmp_path / "store.db")
    before = (src / "manifest.json").read_bytes()
    proc = deepmetric_here("gallery", "export", "--bundle", str(src), "--to", uri)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["items"] == 36 and out["index"]["index_type"] == "HNSW" and out["consistency_level"] == "Strong"
    proc = deepmetric_here("gallery", "export", "--bundle", str(src), "--to", uri)
    assert proc.returncode == 3 and "already exists" in proc.stderr and "--replace" in proc.stderr
    proc = deepmetric_here("gallery", "export", "--bundle", str(src), "--to", uri, "--replace")
    assert proc.returncode == 0 and json.loads(proc.stdout)["replaced"] == out["physical_collection"], proc.stderr

    store = ("--bundle", str(src), "--store", uri)
    proc = deepmetric_here("gallery", "add", *store, "--label", "7", str(new / "n0.png"), str(new / "n1.png"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"uri": uri, "collection": "deepmetric_gallery", "added": [36, 37],
                                       "items": 38}
    proc = deepmetric_here("gallery", "remove", *store, "--id", "36", "--id", "0")
    assert proc.returncode == 0 and json.loads(proc.stdout)["removed"] == [0, 36], proc.stderr
    proc = deepmetric_here("gallery", "remove", *store, "--id", "0")
    assert proc.returncode == 3 and "no item with id 0" in proc.stderr and "removed already" in proc.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    proc = deepmetric_here("gallery", "add", *store, "--label", "7", str(bad))
    assert proc.returncode == 3 and "gallery not changed" in proc.stderr and "bad.png" in proc.stderr
    proc = deepmetric_here("gallery", "add", *store, "--out", str(tmp_path / "o"), "--label", "7", str(bad))
    assert proc.returncode == 3 and "--out writes a bundle" in proc.stderr
    # a collection exported from this bundle is refused with another bundle's model
    proc = deepmetric_here("gallery", "remove", "--bundle", str(deploy_bundle[0]), "--store", uri, "--id", "1")
    assert proc.returncode == 2 and "exported from bundle manifest" in proc.stderr
    assert (src / "manifest.json").read_bytes() == before
    proc = deepmetric_here("gallery", "remove", *store, "--id", "1")  # nothing above changed the collection
    assert proc.returncode == 0 and json.loads(proc.stdout)["items"] == 35, proc.stderr


def test_gallery_export_to_an_unreachable_store_exits_5(env):
    from tests.fixtures import free_port

    _, _, _, src = env
    proc = deepmetric_here("gallery", "export", "--bundle", str(src), "--to", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 5 and "cannot reach Milvus at http://127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


_KILLED_UPDATE = r"""
import os, signal, sys
import deepmetric.bundle.gallery as gallery
import deepmetric.bundle.writer as writer
from deepmetric.cli import main

where, calls = sys.argv[1], []
def killer(real, after):
    def wrapped(*a, **kw):
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **kw)
    return wrapped
if where == "linking":  # some of the parent's files linked into the new folder, not all
    writer._place = killer(writer._place, 3)
else:  # the new folder complete, being verified before it takes the name
    gallery.load_bundle = killer(gallery.load_bundle, 2)
main(sys.argv[2:])
"""


@pytest.mark.parametrize("where", ["linking", "verifying"])
def test_an_update_killed_mid_way_leaves_the_old_version_serving(env, new, tmp_path, where):
    """SIGKILL in the middle of `deepmetric gallery add` (in place): the bundle is the old version, byte for byte,
    loads and answers searches; the next update clears the killed one's temporary and succeeds."""
    import signal
    import subprocess
    import sys

    _, _, _, src = env
    dest = tmp_path / "b"
    shutil.copytree(src, dest)
    before = file_tree(dest)
    proc = subprocess.run([sys.executable, "-c", _KILLED_UPDATE, where, "gallery", "add", "--bundle", str(dest),
                           "--label", "7", str(new / "n0.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".b.")], "the killed update's temporary"
    assert file_tree(dest) == before
    old = load_bundle(dest)
    q = old.vectors(np.array([[3]]))[0]
    assert old.search(q, 1)[0][0]["id"] == 3 and old.gallery_size == 36
    proc = deepmetric("gallery", "add", "--bundle", str(dest), "--label", "7", str(new / "n0.png"))
    assert proc.returncode == 0, proc.stderr
    assert load_bundle(dest).gallery_size == 37 and load_bundle(dest).segments
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"], "the killed update's temporary is cleared"


def test_gallery_compact_and_the_compaction_flags(env, new, tmp_path):
    _, _, _, src = env
    dest = tmp_path / "b"
    proc = deepmetric_here("gallery", "add", "--bundle", str(src), "--out", str(dest), "--label", "7",
                           str(new / "n0.png"), "--max-segments", "0")
    assert proc.returncode == 0 and json.loads(proc.stdout)["compacted"] is True, proc.stderr
    proc = deepmetric_here("gallery", "compact", "--bundle", str(dest))
    assert proc.returncode == 3 and "nothing to compact" in proc.stderr
    proc = deepmetric_here("gallery", "remove", "--bundle", str(dest), "--id", "1", "--compact-share", "0.001",
                           "--no-compact")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0 and out["compacted"] is False and out["tombstones"] == 1, proc.stderr
    proc = deepmetric_here("gallery", "remove", "--bundle", str(dest), "--id", "2", "--compact-share", "0")
    assert proc.returncode == 3 and "share must be > 0" in proc.stderr
    proc = deepmetric_here("gallery", "compact", "--bundle", str(dest), "--out", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["compacted"] and out["segments"] == 0 and out["tombstones"] == 0 and out["gallery_size"] == 36
    c = load_bundle(tmp_path / "c")
    assert c.manifest["lineage"]["gallery_version"] == 3 and 1 not in set(c.ids["id"]) and 36 in set(c.ids["id"])
