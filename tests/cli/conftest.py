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
