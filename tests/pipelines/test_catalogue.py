"""The worked example of README "Your own images" and docs/datasets.md: a generated catalogue of a team's own
images in the folder layout through ingest → validate → train → evaluate → export → index → bundle with one
`kedro run --params data.layout=folder,…`, then `deepmetric search` over a folder of query photos (CSV + HTML) and
`deepmetric embed`. The table layout through `dvc repro` with the parameters in the file is the slow variant."""

from __future__ import annotations

import json
import sys

import pandas as pd
import pytest
import yaml

from tests.fixtures import make_bars
from tests.project_fixtures import make_project, run


def _catalogue(root):
    """12 classes of coloured bars, 6 images each, one folder per class (root/c00/0.png …)."""
    return make_bars(root, split_of=lambda c: "", num_classes=12, per_class=6)


def test_a_folder_catalogue_from_kedro_run_to_search(tmp_path):
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    photos = tmp_path / "products"
    rows = _catalogue(photos)
    run(["kedro", "run", "--params", f"data.layout=folder,data.dataset=bars,data.root={photos}"], project)
    ingest = json.loads((project / "data/08_reporting/ingest.json").read_text())
    assert (ingest["layout"], ingest["dataset"], ingest["images"], ingest["classes"]) == ("folder", "bars", 72, 12)
    assert set(ingest["per_split"]) == {"train", "val", "test"} and ingest["per_split"]["test"]["images"] > 0
    assert json.loads((project / "data/08_reporting/validation.json").read_text())["success"]
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    assert {"recall@1", "recall@8", "map@r"} <= set(metrics)
    bundle = project / "data/09_deploy/bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["dataset"] == "bars"

    # search the bundle with a folder of query photos: copies of gallery images, in folders named by class
    m = pd.read_parquet(project / "data/02_intermediate/manifest_validated.parquet")
    test = m[m.split == "test"].reset_index(drop=True)
    queries = tmp_path / "queries"
    for path in test.path[:5]:
        (queries / path).parent.mkdir(parents=True, exist_ok=True)
        (queries / path).write_bytes((photos / path).read_bytes())
    cli = [sys.executable, "-m", "deepmetric.cli"]
    run([*cli, "search", "--bundle", str(bundle), str(queries), "--out", "results.csv", "-k", "3", "--html",
         "--no-progress"], tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    top = results[results["rank"] == 1].set_index("query")
    assert len(results) == 15 and set(top.index) == set(test.path[:5])
    assert all(top.loc[p, "path"] == p and top.loc[p, "score"] > 0.999 for p in test.path[:5])
    assert top["same_class"].all() and (tmp_path / "results.html").read_text().count("<tr>") == 5
    run([*cli, "embed", "--bundle", str(bundle), str(queries), "--out", "emb.parquet", "--no-progress"], tmp_path)
    assert len(pd.read_parquet(tmp_path / "emb.parquet")) == 5
    assert rows.class_name.nunique() == 12


@pytest.mark.slow  # ~3 min: every stage through DVC
def test_a_table_catalogue_with_boxes_through_dvc_repro(tmp_path):
    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    photos = tmp_path / "shop"
    rows = _catalogue(photos / "img")
    table = pd.DataFrame({"path": "img/" + rows.path, "label": rows.class_name, "x_1": 0, "y_1": 0, "x_2": 30,
                          "y_2": 36, "category": "bars"})
    table.to_csv(photos / "items.csv", index=False)
    params = project / "conf/base/parameters_ingest.yml"
    p = yaml.safe_load(params.read_text())
    p["data"].update(layout="table", dataset="shop", root=str(photos), table="items.csv")
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    run(["dvc", "repro", "bundle"], project)
    m = pd.read_parquet(project / "data/02_intermediate/manifest_validated.parquet")
    assert (m.dataset == "shop").all() and (m.x_2 == 30).all() and (m.category == "bars").all()
    assert (project / "data/09_deploy/bundle/manifest.json").is_file()
    # editing the table (inside data.root, a dependency of ingest) reruns the chain from ingest
    table.assign(x_2=32).to_csv(photos / "items.csv", index=False)
    out = run(["dvc", "repro", "bundle"], project).stdout
    assert "Running stage 'ingest'" in out
    assert (pd.read_parquet(project / "data/02_intermediate/manifest.parquet").x_2 == 32).all()
