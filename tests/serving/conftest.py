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
def page_server(page_data):
    """(base URL, bundle folder, dataset root, manifest) of a server whose bundle has thumbnails."""
    from tests.serving.test_server import start_server, stop

    tmp, root, manifest = page_data
    bundle = make_bundle(tmp / "bundle", root, manifest, onnx_model())
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
