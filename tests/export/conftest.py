"""Fixtures of the export tests: a small dataset, a margin model payload and its ONNX export,
built once and only read."""

from __future__ import annotations

import pytest

from deepmetric.export.onnx_export import export_onnx
from deepmetric.training.model_io import load_model
from tests.deploy_fixtures import make_dataset, make_model_payload


@pytest.fixture(scope="session")
def setup(tmp_path_factory):
    """(dataset root, manifest, method, input spec): the deploy fixtures' dataset and a margin model on it."""
    root = tmp_path_factory.mktemp("export_data")
    manifest = make_dataset(root)
    method, spec = load_model(make_model_payload())
    return root, manifest, method, spec


@pytest.fixture(scope="session")
def torchscript_onnx(setup):
    """The ``setup`` model exported by the tracing exporter (only read by the tests)."""
    _, _, method, spec = setup
    return export_onnx(method, spec, exporter="torchscript")
