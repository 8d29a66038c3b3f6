"""int8 quantization of the exported model (onnxruntime.quantization) on the generated deploy fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import InputSpec
from deepmetric.export.images import iter_batches
from deepmetric.export.onnx_export import read_metadata
from deepmetric.export.quantize import QuantizationError, int8_report, quantize_onnx
from deepmetric.index.embedder import OnnxEmbedder
from tests.deploy_fixtures import CROP, make_dataset, onnx_model


def test_bad_mode_and_missing_calibration_are_refused():
    with pytest.raises(QuantizationError, match="unknown quantization mode 'int4'"):
        quantize_onnx(b"", "int4")
    with pytest.raises(QuantizationError, match="needs calibration images"):
        quantize_onnx(b"", "static")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_int8_model_keeps_the_interface_and_the_embeddings(tmp_path, mode):
    manifest = make_dataset(tmp_path)
    spec = InputSpec(resize=CROP, crop=CROP)
    fp32 = onnx_model()
    train = list(manifest[manifest["split"] == "train"]["path"])
    calibration = iter_batches(tmp_path, train, spec, ImageLimits(max_pixels=None), 4) if mode == "static" else None
    int8 = quantize_onnx(fp32, mode, calibration)
    meta = read_metadata(int8)
    assert meta["precision"] == "int8" and meta["quantization"].startswith(mode)
    assert meta["input"] == read_metadata(fp32)["input"] and meta["method"] == "margin"
    embedder = OnnxEmbedder(int8)  # what the server uses: no change needed
    assert embedder.dim == 16 and json.loads(meta["input"])["crop"] == CROP
    test = manifest[manifest["split"] == "test"]
    batches = list(iter_batches(tmp_path, list(test["path"]), spec, ImageLimits(max_pixels=None), 16))
    x = np.concatenate(batches)
    e8, e32 = embedder.embed(x), OnnxEmbedder(fp32).embed(x)
    np.testing.assert_allclose(np.linalg.norm(e8, axis=1), 1.0, atol=1e-4)
    assert float(np.sum(e8 * e32, axis=1).min()) > 0.95
    report = int8_report(fp32, int8, batches, test["label"].to_numpy(), repeats=2)
    assert report["size_ratio"] < 0.35 and report["images"] == len(test)
    assert 0 <= report["int8"]["map@r"] <= 1 and report["speedup_b32"] > 0
