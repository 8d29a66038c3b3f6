"""Two published releases through a real DVC remote (a local folder) and a real git origin (a bare repository),
for the release tests (`tests/release/`). Importable as ``tests.release_fixtures``.

The build side is a copy of the project whose pipeline outputs are the small deploy fixtures (two untrained
models, seeds 0 and 1, indexed and bundled by the real `index` and `bundle` stages) recorded in dvc.lock with
`dvc commit`, so no training runs here (`tests/release/test_release_e2e.py`, slow, does it with `dvc repro`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.deploy_fixtures import (THRESHOLDS, data_params, draw_image, evaluated, make_dataset, make_model_payload,
                                   model_params, onnx_model)
from tests.fixtures import png_bytes
from tests.pipelines.kedro_helpers import load_params, run_stage
from tests.project_fixtures import build_repo, run
from tests.server_fixtures import deepmetric_here as cli

METRICS = {1: {"recall@1": 0.61, "map@r": 0.31, "nmi": 0.52, "best_epoch": 1},
           2: {"recall@1": 0.72, "map@r": 0.44, "nmi": 0.58, "best_epoch": 2}}


def build_outputs(project: Path, version: int) -> None:
    """Every output of the pipeline for model ``version`` (seed version-1), then `dvc commit` records them."""
    from deepmetric.io.datasets import BytesDataset, FileTreeDataset, JSONDataset, ParquetDataset, TorchDataset

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
    JSONDataset(str(data / "08_reporting/baselines.json")).save({"pixels": {"map@r": 0.1}})
    BytesDataset(str(data / "08_reporting/retrieval_grid.png")).save(png_bytes(draw_image(0, 0)))
    onnx = onnx_model(seed=seed)
    BytesDataset(str(data / "06_models/model.onnx")).save(onnx)
    JSONDataset(str(data / "08_reporting/metrics.json")).save(evaluated(onnx, METRICS[version]))
    JSONDataset(str(data / "08_reporting/export.json")).save({"max_abs_diff": 0.0})
    # the evaluate stage's other outs (dvc commit needs every declared out)
    JSONDataset(str(data / "08_reporting/thresholds.json")).save(THRESHOLDS)
    JSONDataset(str(data / "08_reporting/failures.json")).save({"summary": {"classes": 0}})
    (data / "08_reporting/per_class.csv").write_text("label,class_name,queries,map@r,recall@1\n")
    BytesDataset(str(data / "08_reporting/worst_queries.png")).save(png_bytes(draw_image(1, 1)))
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


def make_world(tmp: Path) -> dict:
    """Under ``tmp``: the build project (models 1 and 2 published as v1 and v2, the first by `python -m
    deepmetric.cli` as a user runs it), its git origin and DVC remote, a query image and what each release answers
    to it, computed from the published bundle: a host must give the same."""
    import numpy as np

    from deepmetric.data.images import ImageLimits, open_image
    from deepmetric.data.transforms import eval_image
    from deepmetric.bundle import load_bundle

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
