"""Shared by the page tests (HTTP and browser): one real `deepmetric serve` over the session's default bundle
(tests/conftest.py, with thumbnails), and one over the same gallery without them."""

from __future__ import annotations

import pytest

from tests.deploy_fixtures import make_bundle, onnx_model


@pytest.fixture(scope="session")
def page_server(deploy_bundle):
    """(base URL, bundle folder, dataset root, manifest) of a server whose bundle has thumbnails."""
    from tests.serving.test_server import start_server, stop

    bundle, root, manifest = deploy_bundle
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)


@pytest.fixture(scope="session")
def page_server_without_thumbnails(deploy_data):
    from tests.serving.test_server import start_server, stop

    tmp, root, manifest = deploy_data
    bundle = make_bundle(tmp / "bundle_nothumbs", root, manifest, onnx_model(),
                         bundle={"thumbnails": {"enabled": False}})
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)
