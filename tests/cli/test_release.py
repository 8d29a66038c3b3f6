"""`deepmetric publish | pull | releases`: the refusals that need no repository (names, missing --repo, no DVC).
Publishing and pulling through a real DVC remote and git origin: tests/release/test_publish.py and test_fetch.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deepmetric.cli import build_parser
from tests.server_fixtures import deepmetric_here


@pytest.mark.parametrize("argv", [["publish", "bad/name", "--repo-dir", "."], ["pull", "v1..2", "--repo", "x"],
                                  ["pull", "v1.lock", "--repo", "x"]])
def test_bad_release_names_are_bad_input(argv):
    proc = deepmetric_here(*argv)
    assert proc.returncode == 3 and proc.stderr.startswith("deepmetric: release name") and "is not valid" in proc.stderr


def test_repo_comes_from_the_flag_or_the_environment(monkeypatch):
    monkeypatch.delenv("DEEPMETRIC_RELEASE_REPO", raising=False)
    proc = deepmetric_here("pull", "v1")
    assert proc.returncode == 3 and "the following arguments are required: --repo" in proc.stderr
    monkeypatch.setenv("DEEPMETRIC_RELEASE_REPO", "https://git.example.com/ml/deepmetric.git")
    monkeypatch.setenv("DEEPMETRIC_RELEASES_DIR", "/srv/releases")
    args = build_parser().parse_args(["pull", "v1"])
    assert args.repo == "https://git.example.com/ml/deepmetric.git" and args.dest == "/srv/releases"
    assert build_parser().parse_args(["releases"]).repo == "https://git.example.com/ml/deepmetric.git"


def test_without_dvc_the_release_commands_say_which_extra_brings_it():
    code = ("import sys\nsys.modules['dvc'] = None\nfrom deepmetric.cli import main\n"
            "sys.exit(main(['pull', 'v1', '--repo', 'x']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "fetching releases needs DVC" in proc.stderr and "deepmetric[host]" in proc.stderr
