"""`dvc repro` end to end with a timm ViT (timm's 6-block test ViT, random weights, no embedding head) on the built-in
glyph set: train → evaluate → export (ONNX parity) → index → bundle, then `deepmetric serve` answers a search."""

from __future__ import annotations

import json

import pandas as pd
import yaml

from tests.project_fixtures import TINY, make_project, run
from tests.server_fixtures import post_images, start_server, stop

VIT_TRAIN = {"backbone": {"name": "timm/test_vit", "img_size": 32, "layer_decay": 0.75}, "embedding_dim": None,
             "optimizer": {"name": "adamw", "lr": 3.0e-4, "weight_decay": 0.05}}


def test_a_timm_vit_goes_from_training_to_serving(tmp_path):
    overrides = dict(TINY)
    train = overrides["parameters_train.yml"]
    overrides["parameters_train.yml"] = {**train, "train": {**train["train"], **VIT_TRAIN}}
    project = make_project(tmp_path, overrides)
    run(["dvc", "repro"], project)

    export = json.loads((project / "data/08_reporting/export.json").read_text())
    assert export["passed"] and export["max_abs_diff"] <= export["tolerance"]
    assert export["backbone"] == {"family": "timm", "name": "timm/test_vit", "weights_sha256": None}
    assert export["embedding_dim"] == 64  # no head: the ViT's width
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert 0 <= metrics["map@r"] <= 1
    bundle = project / "data/09_deploy/bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["embedding_dim"] == 64 and manifest["backbone"] == export["backbone"]
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["bundle"]

    ids = pd.read_parquet(bundle / "ids.parquet")
    image = (project / "data/01_raw/glyphs" / ids["path"].iloc[0]).read_bytes()
    proc, base = start_server(bundle)
    try:
        status, body = post_images(base, "/v1/search?k=3", [("image", "q.png", image)])
    finally:
        stop(proc)
    assert status == 200, body
    top = body["results"][0]["neighbors"]
    assert len(top) == 3 and top[0]["path"] == ids["path"].iloc[0] and top[0]["score"] > 0.999  # itself first
