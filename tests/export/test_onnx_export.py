"""ONNX export (deepmetric.export.onnx_export): uint8 NHWC in, dynamic batch/height/width, L2-normalised out,
self-contained, parity vs PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from deepmetric.data.images import ImageLimits
from deepmetric.export.onnx_export import ExportModule, export_onnx, read_metadata
from deepmetric.export.parity import check_parity, ort_session
from deepmetric.training.model_io import load_model
from tests.deploy_fixtures import CROP, EMBED_DIM, make_model_payload


def _run(onnx_bytes: bytes, x: np.ndarray) -> np.ndarray:
    s = ort_session(onnx_bytes)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _no_external_data(onnx_bytes: bytes) -> None:
    model = onnx.load_from_string(onnx_bytes)
    for t in model.graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL, f"initializer {t.name} stored outside the file"


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_export_dynamic_shapes_and_parity(setup, torchscript_onnx, exporter):
    _, _, method, spec = setup
    onnx_bytes = torchscript_onnx if exporter == "torchscript" else export_onnx(method, spec, exporter="dynamo")
    _no_external_data(onnx_bytes)
    s = ort_session(onnx_bytes)
    inp, out = s.get_inputs()[0], s.get_outputs()[0]
    assert inp.type == "tensor(uint8)" and inp.shape[3] == 3
    assert all(isinstance(d, str) for d in inp.shape[:3]), f"batch/height/width must be dynamic: {inp.shape}"
    module = ExportModule(method.export_module(), spec).eval()
    rng = np.random.default_rng(0)
    for shape in [(1, CROP, CROP, 3), (5, CROP, CROP, 3), (2, CROP + 9, CROP + 4, 3)]:
        x = rng.integers(0, 256, size=shape, dtype=np.uint8)
        got = _run(onnx_bytes, x)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert got.shape == (shape[0], EMBED_DIM)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert np.abs(got - want).max() < 1e-4
    # crop×crop input: the in-graph resize is an identity, so the graph equals the method's own embed().
    x = rng.integers(0, 256, size=(3, CROP, CROP, 3), dtype=np.uint8)
    from deepmetric.models.preprocess import to_model_input

    with torch.no_grad():
        ref = method.embed(to_model_input(torch.from_numpy(x).permute(0, 3, 1, 2), spec.mean, spec.std)).numpy()
    assert np.abs(_run(onnx_bytes, x) - ref).max() < 1e-4
    meta = read_metadata(onnx_bytes)
    assert json.loads(meta["input"]) == {"layout": "NHWC", "dtype": "uint8", "resize": CROP, "crop": CROP,
                                         "mean": list(spec.mean), "std": list(spec.std)}
    assert meta["method"] == "margin" and meta["embedding_dim"] == str(EMBED_DIM) and meta["exporter"] == exporter


@pytest.mark.parametrize("backbone", ["timm/test_vit", "timm/test_convnext"])
def test_a_vit_and_a_convnext_export_with_the_same_input_contract(setup, backbone):
    """Transformers and ConvNeXts go through the same graph: uint8 NHWC of any size in, the in-graph resize to the
    crop, opset ≥ 17 (18 here), parity with PyTorch on the test images; the backbone is recorded in the metadata."""
    root, manifest, _, _ = setup
    method, spec = load_model(make_model_payload(backbone={"name": backbone}, embedding_dim=None))
    onnx_bytes = export_onnx(method, spec, exporter="dynamo", opset=18)
    assert onnx.load_from_string(onnx_bytes).opset_import[0].version >= 17
    s = ort_session(onnx_bytes)
    assert s.get_inputs()[0].type == "tensor(uint8)" and all(isinstance(d, str) for d in s.get_inputs()[0].shape[:3])
    x = np.random.default_rng(0).integers(0, 256, size=(2, CROP + 9, CROP + 4, 3), dtype=np.uint8)
    with torch.no_grad():
        want = ExportModule(method.export_module(), spec).eval()(torch.from_numpy(x)).numpy()
    assert np.abs(_run(onnx_bytes, x) - want).max() < 1e-4
    report = check_parity(method, spec, onnx_bytes, manifest, root, tolerance=1e-4, recall_tolerance=0.0,
                          max_images=50, batch_size=16, limits=ImageLimits(40_000_000))
    assert report["passed"] and report["embedding_dim"] == method.backbone.feature_dim
    assert json.loads(read_metadata(onnx_bytes)["backbone"]) == {"family": "timm", "name": backbone,
                                                                 "weights_sha256": None}
