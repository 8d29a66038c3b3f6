"""`deepmetric pull` (deepmetric.release.fetch) on an inference host, from the releases of
tests/release_fixtures.py.

The host is a separate folder with no access to the build clone: `deepmetric pull` has DVC clone the origin and
fetch from the remote, in a process where importing torch or Kedro fails. It pulls v2 and serves it over a
socket, rolls back to v1 and the answers change back; tampered remote objects, unknown tags and unreachable
remotes are refused with their own exit status.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.deploy_fixtures import draw_image
from tests.fixtures import free_port, png_bytes
from tests.project_fixtures import run
from tests.release_fixtures import bundle_objects
from tests.server_fixtures import deepmetric_here as cli
from tests.server_fixtures import host, host_cmd, post_images, request, wait_healthy


def _neighbours(hits):
    return [(h["id"], round(h["score"], 4)) for h in hits]


def start_host_server(bundle: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(host_cmd("serve", "--bundle", str(bundle), "--port", str(port), "--log-level", "warning"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc, wait_healthy(proc, port)


def served(bundle: Path, query) -> tuple[str, list]:
    proc, base = start_host_server(bundle)
    try:
        status, info = request(base, "GET", "/v1/info")
        assert status == 200
        status, body = post_images(base, "/v1/search?k=5", query)
        assert status == 200, body
        return info["manifest"]["release"] if "manifest" in info else info["release"], body["results"][0]["neighbors"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_host_pulls_v2_serves_it_rolls_back_to_v1(world, tmp_path):
    dest = tmp_path / "releases"
    proc = host("pull", "v2", "--repo", str(world["origin"]), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest / "v2") and os.readlink(dest / "current") == "v2"
    release, hits = served(dest / "current", world["query"])
    assert release == "v2"
    assert _neighbours(hits) == _neighbours(world["expected"][2]) != _neighbours(world["expected"][1])

    proc = host("pull", "v1", "--repo", str(world["origin"]), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(dest / "current") == "v1"
    release, hits = served(dest / "current", world["query"])
    assert release == "v1" and _neighbours(hits) == _neighbours(world["expected"][1])
    assert sorted(p.name for p in dest.iterdir()) == ["current", "v1", "v2"], "no temporary left behind"


def _tampered_remote(world, tmp_path, name: str, change) -> Path:
    copy = tmp_path / name
    shutil.copytree(world["remote"], copy)
    record = json.loads(run(["git", "show", "v2:release/release.json"], world["project"]).stdout)
    target = bundle_objects(copy, record["bundle_md5"])
    change(target)
    return copy


def test_tampered_remote_objects_are_refused(world, tmp_path):
    from deepmetric.bundle.writer import restamp

    def flip_model(objs):
        path = objs["model.onnx"]
        os.chmod(path, 0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

    def forge_manifest(objs):
        # rewrite the manifest with self-consistent checksums: only the record in git can tell
        path = objs["manifest.json"]
        os.chmod(path, 0o644)
        manifest = json.loads(path.read_text())
        forged = restamp(manifest, accepted_on={"map@r": 0.99})
        path.write_text(json.dumps(forged, indent=2, sort_keys=True) + "\n")

    dest = tmp_path / "releases"
    for name, change, names in [("flipped", flip_model, "model.onnx"), ("forged", forge_manifest, "manifest.json")]:
        remote = _tampered_remote(world, tmp_path, name, change)
        proc = cli("pull", "v2", "--repo", str(world["origin"]), "--dest", str(dest), "--remote-url", str(remote))
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        assert "release v2 refused" in proc.stderr and names in proc.stderr
        assert "does not match" in proc.stderr or "checksum mismatch" in proc.stderr
        assert not (dest / "v2").exists() and not (dest / "current").exists()
        assert not dest.exists(), "no half-installed release, and no DEST the refused pull created (issue 23)"


def test_unknown_tag_and_unreachable_remote_or_repository(world, tmp_path):
    dest = tmp_path / "releases"
    proc = cli("pull", "v9", "--repo", str(world["origin"]), "--dest", str(dest))
    assert proc.returncode == 4 and "unknown release 'v9'" in proc.stderr and "v1, v2" in proc.stderr
    branch = run(["git", "symbolic-ref", "--short", "HEAD"], world["project"]).stdout.strip()
    proc = cli("pull", branch, "--repo", str(world["origin"]), "--dest", str(dest))
    assert proc.returncode == 4 and f"{branch} is not a release tag" in proc.stderr, proc.stderr
    proc = cli("pull", "v2", "--repo", str(world["origin"]), "--dest", str(dest), "--remote-url", str(tmp_path / "gone"))
    assert proc.returncode == 5 and "unreachable" in proc.stderr and "gone" in proc.stderr
    proc = cli("pull", "v2", "--repo", str(tmp_path / "no-such-repo.git"), "--dest", str(dest))
    assert proc.returncode == 5 and "no-such-repo.git" in proc.stderr and "unreachable" in proc.stderr
    proc = cli("releases", "--repo", str(world["origin"]))
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines()] == ["v1:", "v2:"]
    assert not dest.exists() or not any(dest.iterdir())


def test_refused_pulls_leave_dest_as_it_was(world, tmp_path):
    """An unknown --remote ended in a traceback, a refused pull left the DEST it created behind, and a
    `releases/current` that a gallery update had turned into a folder made `pull` fail with IsADirectoryError and
    leave a temporary link (issue 23)."""
    origin = str(world["origin"])
    dest = tmp_path / "new" / "releases"
    proc = cli("pull", "v2", "--repo", origin, "--dest", str(dest), "--remote", "nosuch")
    assert proc.returncode == 5, proc.stderr
    assert "DVC remote unusable: remote 'nosuch' doesn't exist (configured remotes: none); pass --remote" in proc.stderr
    assert not (tmp_path / "new").exists(), "a DEST the refused pull created is removed again"
    proc = cli("pull", "v9", "--repo", origin, "--dest", str(dest))
    assert proc.returncode == 4 and not (tmp_path / "new").exists()

    host_dir = tmp_path / "host"
    (host_dir / "current").mkdir(parents=True)
    (host_dir / "current" / "keep.txt").write_text("keep")
    proc = cli("pull", "v2", "--repo", origin, "--dest", str(host_dir))
    assert proc.returncode == 3 and f"{host_dir / 'current'} is a folder, not the symlink" in proc.stderr
    assert sorted(p.name for p in host_dir.rglob("*")) == ["current", "keep.txt"]


def test_pull_after_a_gallery_update_through_current(world, tmp_path):
    dest = tmp_path / "releases"
    assert cli("pull", "v2", "--repo", str(world["origin"]), "--dest", str(dest)).returncode == 0
    image = tmp_path / "new.png"
    image.write_bytes(png_bytes(draw_image(1, 99)))
    proc = cli("gallery", "add", "--bundle", str(dest / "current"), "--label", "1", str(image))
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(dest / "current") == "v2-g1"
    proc = cli("pull", "v1", "--repo", str(world["origin"]), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(dest / "current") == "v1"
    assert sorted(p.name for p in dest.iterdir()) == ["current", "v1", "v2", "v2-g1"], "no temporary left behind"
