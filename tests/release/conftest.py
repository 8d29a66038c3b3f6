"""The release tests' shared world (tests/release_fixtures.py), built once: `test_publish` and `test_fetch` only
read it, and a test that changes the build project puts it back."""

from __future__ import annotations

import pytest

from tests.release_fixtures import make_world


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("release"))
