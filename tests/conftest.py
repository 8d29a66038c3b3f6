"""Session fixtures shared across the test tree (built lazily, once, by the first test that asks)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def deploy_data(tmp_path_factory):
    """(folder, dataset root, manifest) of the deploy fixtures' small PNG dataset (tests/deploy_fixtures.py)."""
    from tests.deploy_fixtures import make_dataset

    tmp = tmp_path_factory.mktemp("deploy")
    root = tmp / "data"
    manifest = make_dataset(root)
    return tmp, root, manifest


@pytest.fixture(scope="session")
def deploy_bundle(deploy_data):
    """(bundle folder, dataset root, manifest): the default bundle (Flat index, thumbnails) over ``deploy_data``
    through the real index and bundle code. Only read: tests that alter a bundle copy it first."""
    from tests.deploy_fixtures import make_bundle, onnx_model

    tmp, root, manifest = deploy_data
    return make_bundle(tmp / "bundle", root, manifest, onnx_model()), root, manifest


@pytest.fixture(scope="session")
def thresholds_bundle(deploy_data):
    """(bundle folder, dataset root, manifest): the default bundle's gallery (no thumbnails) with match thresholds
    (:data:`tests.deploy_fixtures.FIXTURE_THRESHOLDS`). Only read."""
    from tests.deploy_fixtures import FIXTURE_THRESHOLDS, make_bundle, onnx_model

    tmp, root, manifest = deploy_data
    folder = make_bundle(tmp / "bundle_thresholds", root, manifest, onnx_model(),
                         bundle={"thumbnails": {"enabled": False}}, thresholds=FIXTURE_THRESHOLDS)
    return folder, root, manifest


@pytest.fixture(scope="session")
def thresholds_server(thresholds_bundle):
    """(base URL, bundle folder, dataset root, manifest) of `deepmetric serve` over :func:`thresholds_bundle`."""
    from tests.server_fixtures import start_server, stop

    folder, root, manifest = thresholds_bundle
    proc, base = start_server(folder)
    yield base, folder, root, manifest
    stop(proc)
