"""Releases through a real DVC remote (a local folder) and a real git origin (a bare repository).

The build side is a copy of the project whose pipeline outputs are the small deploy fixtures (two untrained
models, seeds 0 and 1, indexed and bundled by the real `index` and `bundle` stages) recorded in dvc.lock with
`dvc commit`, so no training runs here (`tests/release/test_release_e2e.py`, slow, does it with `dvc repro`).
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
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy_fixtures import (data_params, draw_image, evaluated, make_dataset, make_model_payload, model_params,
                                   onnx_model)
from tests.fixtures import free_port, png_bytes
from tests.pipelines.kedro_helpers import load_params, run_stage
from tests.project_fixtures import build_repo, run
from tests.server_fixtures import deepmetric_here as cli
from tests.server_fixtures import host, host_cmd, post_images, request, wait_healthy

METRICS = {1: {"recall@1": 0.61, "map@r": 0.31, "nmi": 0.52, "best_epoch": 1},
           2: {"recall@1": 0.72, "map@r": 0.44, "nmi": 0.58, "best_epoch": 2}}


def build_outputs(project: Path, version: int) -> None:
    """Every output of the pipeline for model ``version`` (seed version-1), then `dvc commit` records them."""
    from deepmetric.io.datasets import BytesDataset, FileTreeDataset, JSONDataset, ParquetDataset, TextDataset, TorchDataset

    data = project / "data"
    root = data / "01_raw/glyphs"
    if not root.exists():
        manifest = make_dataset(root)
        ParquetDataset(str(data / "02_intermediate/manifest.parquet")).save(manifest)
        ParquetDataset(str(data / "02_intermediate/manifest_validated.parquet")).save(manifest)
        JSONDataset(str(data / "08_reporting/ingest.json")).save({"images": len(manifest)})
        JSONDataset(str(data / "08_reporting/validation.json")).save({"success": True})
        FileTreeDataset(str(data / "08_reporting/validation_docs")).save({"index.html": b"<html></html>"})
    seed = version - 1
    TorchDataset(str(data / "06_models/model.pt")).save(make_model_payload(seed=seed))
    TextDataset(str(data / "08_reporting/train_log.csv")).save("epoch,loss\n1,0.5\n")
    JSONDataset(str(data / "08_reporting/baselines.json")).save({"pixels": {"map@r": 0.1}})
    BytesDataset(str(data / "08_reporting/retrieval_grid.png")).save(png_bytes(draw_image(0, 0)))
    onnx = onnx_model(seed=seed)
    BytesDataset(str(data / "06_models/model.onnx")).save(onnx)
    JSONDataset(str(data / "08_reporting/metrics.json")).save(evaluated(onnx, METRICS[version]))
    JSONDataset(str(data / "08_reporting/export.json")).save({"max_abs_diff": 0.0})
    params = {"data": data_params(root), "model": model_params(), "index": load_params("index")["index"],
              "bundle": load_params("bundle")["bundle"]}
    run_stage("index", project, params)
    run_stage("bundle", project, params)
    run(["dvc", "commit", "-f", "-q"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", f"pipeline outputs of model {version}"], project)


def remote_object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def bundle_objects(remote: Path, release_md5: str) -> dict[str, Path]:
    listing = json.loads(remote_object(remote, release_md5).read_text())
    return {e["relpath"]: remote_object(remote, e["md5"]) for e in listing}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import numpy as np

    from deepmetric.data.images import ImageLimits, open_image
    from deepmetric.data.transforms import eval_image
    from deepmetric.bundle import load_bundle

    tmp = tmp_path_factory.mktemp("release")
    # `make release` on the built-in set: a local-folder default remote in .dvc/config.local (not in git).
    project, origin, remote = build_repo(tmp, committed_remote=False)
    expected, revisions = {}, {}
    for version in (1, 2):
        build_outputs(project, version)
        revisions[version] = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
        if version == 1:  # the command as a user runs it
            proc = run([sys.executable, "-m", "deepmetric.cli", "publish", "v1", "--git-remote", "origin"],
                       project)
        else:
            proc = cli("publish", "v2", "--git-remote", "origin", cwd=project)
            assert proc.returncode == 0, proc.stderr
        assert f"published release v{version}" in proc.stderr
        # what this release answers, computed here from the published folder: the host must give the same
        built = load_bundle(project / "release/bundle")
        image = (project / "data/01_raw/glyphs" / built.ids["path"][3]).read_bytes()
        query = [("image", "q.png", image)]
        pixels = eval_image(open_image(image, limits=ImageLimits(max_pixels=None)), built.spec)
        expected[version] = built.search(built.embed(np.stack([pixels])), 5)[0]
    return {"tmp": tmp, "origin": origin, "remote": remote, "project": project, "query": query,
            "expected": expected, "revisions": revisions}


def _neighbours(hits):
    return [(h["id"], round(h["score"], 4)) for h in hits]


def test_publish_records_revision_stage_hash_and_data_version(world):
    from deepmetric.release.provenance import stage_hash

    project = world["project"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    record = json.loads(run(["git", "show", "v2:release/release.json"], project).stdout)
    manifest = json.loads((project / "release/bundle/manifest.json").read_text())
    prov = manifest["provenance"]
    assert manifest["release"] == record["name"] == "v2"
    assert prov["git_revision"] == record["git_revision"] == world["revisions"][2]
    # the tag is the release commit on top of the revision that built it
    assert run(["git", "rev-parse", "v2^"], project).stdout.strip() == world["revisions"][2]
    assert prov["dvc"]["stage"] == "bundle" and prov["dvc"]["stage_hash"] == stage_hash(lock["stages"]["bundle"])
    assert prov["dvc"]["out_md5"] == lock["stages"]["bundle"]["outs"][0]["md5"]
    glyphs = lock["stages"]["glyphs"]["outs"][0]
    assert prov["data"]["root"] == "data/01_raw/glyphs" and prov["data"]["root_md5"] == glyphs["md5"]
    validated = [o for o in lock["stages"]["validate"]["outs"] if o["path"].endswith("manifest_validated.parquet")][0]
    assert prov["data"]["manifest_md5"] == validated["md5"]
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert metrics["map@r"] == METRICS[2]["map@r"]
    assert prov["metrics"] == record["metrics"] == metrics
    assert prov["params"]["train"]["method"] == "margin"
    assert record["manifest_sha256"] == manifest["manifest_sha256"]
    # the payload is the built bundle's, byte for byte
    assert {"model.onnx", "index.faiss", "ids.parquet"} <= set(manifest["files"])
    for f in manifest["files"]:
        assert (project / "release/bundle" / f).read_bytes() == (project / "data/09_deploy/bundle" / f).read_bytes()
    # origin has both tags; the remote has the release bundle's objects
    tags = run(["git", "ls-remote", "--tags", str(world["origin"])], project).stdout
    assert "refs/tags/v1" in tags and "refs/tags/v2" in tags
    assert set(bundle_objects(world["remote"], record["bundle_md5"])) == {*manifest["files"], "manifest.json"}
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_a_clone_of_a_release_is_restored_by_dvc_pull(world, tmp_path):
    """`git clone -b v2 && dvc pull` gives the release's workspace, with nothing for `dvc repro` to redo."""
    clone = tmp_path / "teammate"
    run(["git", "clone", "-q", "--branch", "v2", str(world["origin"]), str(clone)], tmp_path)
    run(["dvc", "remote", "add", "--local", "-d", "store", str(world["remote"])], clone)
    run(["dvc", "pull", "-q"], clone)
    assert "up to date" in run(["dvc", "status"], clone).stdout
    for path in ("release/bundle/manifest.json", "data/09_deploy/bundle/model.onnx", "data/06_models/model.pt"):
        assert (clone / path).read_bytes() == (world["project"] / path).read_bytes()


def test_publish_refusals(world, tmp_path):
    project = world["project"]

    def publish(*args):
        return cli("publish", *args, cwd=project)

    proc = publish("v2")
    assert proc.returncode == 6 and "release v2 exists" in proc.stderr
    proc = publish("bad/name")
    assert proc.returncode == 3 and "not valid" in proc.stderr
    params = project / "conf/base/parameters_bundle.yml"
    original = params.read_text()
    try:
        params.write_text(original.replace("release: null", "release: other"))
        proc = publish("v3")
        assert proc.returncode == 6 and "uncommitted changes" in proc.stderr and "parameters_bundle.yml" in proc.stderr
        run(["git", "commit", "-q", "-am", "a parameter change not reproduced"], project)
        proc = publish("v3")
        assert proc.returncode == 6 and "not up to date with dvc.lock" in proc.stderr and "bundle" in proc.stderr
    finally:
        run(["git", "reset", "-q", "--hard", "v2"], project)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote's folder should be")
    run(["dvc", "remote", "add", "--local", "broken", str(blocker)], project)
    try:
        proc = publish("v3", "--remote", "broken")
        assert proc.returncode == 5 and "dvc push to remote 'broken'" in proc.stderr, proc.stderr
    finally:
        run(["dvc", "remote", "remove", "--local", "broken"], project)
    assert run(["git", "status", "--porcelain"], project).stdout == "", "a failed publish leaves the workspace as it was"
    assert run(["git", "tag"], project).stdout.split() == ["v1", "v2"]


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


def test_publish_names_changed_files_exactly_and_refuses_an_unknown_remote(world):
    """The first changed file lost its first letter ("EADME.md"), and an unknown --remote ended in a traceback
    (issue 23)."""
    project = world["project"]
    try:
        for name in ("dvc.yaml", "pyproject.toml"):
            with open(project / name, "a") as f:
                f.write("# changed\n")
        proc = cli("publish", "v3", cwd=project)
        assert proc.returncode == 6 and "uncommitted changes to tracked files (dvc.yaml, pyproject.toml)" in proc.stderr
    finally:
        run(["git", "checkout", "--", "dvc.yaml", "pyproject.toml"], project)
    proc = cli("publish", "v3", "--remote", "nosuch", cwd=project)
    assert proc.returncode == 5, proc.stderr
    assert "DVC remote unusable: remote 'nosuch' doesn't exist (configured remotes: store)" in proc.stderr
    assert run(["git", "tag"], project).stdout.split() == ["v1", "v2"]


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
