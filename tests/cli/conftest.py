"""The bundle the command-line tests run on: the deploy fixtures' dataset with an HNSW index (so that `info`
shows its search parameters), built once per session."""

from __future__ import annotations

import pytest

from tests.deploy_fixtures import make_bundle, make_dataset, onnx_model


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """(folder, dataset root, manifest, bundle folder). Only read: tests that alter a bundle copy it first."""
    tmp = tmp_path_factory.mktemp("cli")
    root = tmp / "data"
    manifest = make_dataset(root)
    bundle = make_bundle(tmp / "bundle", root, manifest, onnx_model(),
                         index={"factory": "HNSW8", "search": {"efSearch": 40}})
    return tmp, root, manifest, bundle


@pytest.fixture
def query_photos(env, tmp_path):
    """``make(n) -> (folder, rows)``: a folder of query photos — the first ``n`` test images of ``env``'s dataset,
    copied to ``<tmp>/queries/<class name>/<file>`` — and their manifest rows."""
    import shutil

    def make(n: int = 8):
        _, root, manifest, _ = env
        test = manifest[manifest["split"] == "test"].reset_index(drop=True).iloc[:n]
        for path, name in zip(test["path"], test["class_name"]):
            dest = tmp_path / "queries" / name / path.rsplit("/", 1)[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / path, dest)
        return tmp_path / "queries", test

    return make
