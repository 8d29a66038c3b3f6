"""`deepmetric gallery add|remove` on a real bundle (tests/cli/conftest.py): a new version, ids stable, refusals
as messages with exit 3 (bad input) or 2 (bundle refused). The update itself: tests/bundle/test_gallery.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from deepmetric.bundle import load_bundle
from tests.deploy_fixtures import draw_image
from tests.fixtures import png_bytes
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
