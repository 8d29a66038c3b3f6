"""The parity check (deepmetric.export.parity): the ONNX graph against PyTorch on the manifest's test images."""

from __future__ import annotations

import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.export.parity import ParityError, check_parity
from deepmetric.training.model_io import load_model
from tests.deploy_fixtures import make_model_payload


def test_parity_report_on_real_images(setup, torchscript_onnx):
    root, manifest, method, spec = setup
    report = check_parity(method, spec, torchscript_onnx, manifest, root, tolerance=1e-4, recall_tolerance=0.0,
                          max_images=100, batch_size=8, limits=ImageLimits(max_pixels=10**7))
    assert report["passed"] and report["images"] == int((manifest["split"] == "test").sum())
    assert report["max_abs_diff"] < 1e-4
    assert report["recall@1_onnx"] == pytest.approx(report["recall@1_pytorch"])
    assert 0.0 <= report["recall@1_pytorch"] <= 1.0


def test_parity_fails_loudly_above_tolerance(setup, torchscript_onnx):
    root, manifest, method, spec = setup
    with pytest.raises(ParityError, match="exceeds export.tolerance"):
        check_parity(method, spec, torchscript_onnx, manifest, root, tolerance=1e-12, recall_tolerance=0.0,
                     max_images=10, batch_size=8, limits=ImageLimits(max_pixels=10**7))


def test_parity_catches_a_different_model(setup, torchscript_onnx):
    """An ONNX file of another model (other weights) must not pass as this one's export."""
    root, manifest, _, spec = setup
    other, _ = load_model(make_model_payload(seed=1))
    with pytest.raises(ParityError):
        check_parity(other, spec, torchscript_onnx, manifest, root, tolerance=1e-4, recall_tolerance=0.01,
                     max_images=10, batch_size=8, limits=ImageLimits(max_pixels=10**7))
