"""Shared by the page tests (HTTP and browser): one real `deepmetric serve` over the session's default bundle
(tests/conftest.py, with thumbnails), and one over the same gallery without them."""

from __future__ import annotations

import pytest

from tests.deploy_fixtures import make_bundle, onnx_model
from tests.server_fixtures import start_server, stop


@pytest.fixture(scope="session")
def page_server(deploy_bundle):
    """(base URL, bundle folder, dataset root, manifest) of a server whose bundle has thumbnails."""
    bundle, root, manifest = deploy_bundle
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)


@pytest.fixture(scope="session")
def page_server_without_thumbnails(deploy_data):
    tmp, root, manifest = deploy_data
    bundle = make_bundle(tmp / "bundle_nothumbs", root, manifest, onnx_model(),
                         bundle={"thumbnails": {"enabled": False}})
    proc, base = start_server(bundle)
    yield base, bundle, root, manifest
    stop(proc)


@pytest.fixture(scope="session")
def loaded(deploy_bundle):
    """The session's default bundle, loaded once (read-only; every app made from it has its own state)."""
    from deepmetric.bundle import load_bundle

    return load_bundle(deploy_bundle[0])


@pytest.fixture()
def client(loaded):
    """``client(settings=None, **create_app_kwargs)``: a TestClient (lifespan run) over the real app and the
    session's bundle; closed at the end of the test."""
    from fastapi.testclient import TestClient

    from deepmetric.serving.app import create_app

    opened = []

    def make(settings=None, **kw):
        c = TestClient(create_app(loaded, settings, **kw))
        opened.append(c.__enter__())
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)
