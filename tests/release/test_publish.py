"""`deepmetric publish` (deepmetric.release.publish) through a real DVC remote and git origin
(tests/release_fixtures.py): what a release records, a clone restored by `dvc pull`, and the refusals, each
leaving the workspace as it was."""

from __future__ import annotations

import json

import yaml

from tests.project_fixtures import run
from tests.release_fixtures import METRICS, bundle_objects
from tests.server_fixtures import deepmetric_here as cli


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
