"""Shared by the page tests (HTTP and browser): one real `deepmetric serve` over a bundle with thumbnails, and
one over the same gallery without them."""

from __future__ import annotations

import pytest

from tests.deploy_fixtures import make_bundle, make_dataset, onnx_model


@pytest.fixture(scope="session")
def page_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    root = tmp / "data"
    manifest = make_dataset(root)
    return tmp, root, manifest


@pytest.fixture(scope="session")
def page_bundle(page_data):
    """(bundle folder with thumbnails, dataset root, manifest), built once per test session."""
    tmp, root, manifest = page_data
    return make_bundle(tmp / "bundle", root, manifest, onnx_model()), root, manifest


@pytest.fixture(scope="session")
def page_server(page_bundle):
    """(base URL, bundle folder, dataset root, manifest) of a server whose bundle has thumbnails."""
    from tests.serving.test_server import start_server, stop

    bundle, root, manifest = page_bundle
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)


@pytest.fixture(scope="session")
def page_server_without_thumbnails(page_data):
    from tests.serving.test_server import start_server, stop

    tmp, root, manifest = page_data
    bundle = make_bundle(tmp / "bundle_nothumbs", root, manifest, onnx_model(),
                         bundle={"thumbnails": {"enabled": False}})
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)
