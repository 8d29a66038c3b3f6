"""The export stage as one function (deepmetric.export.stage): export, parity report, input-spec check."""

from __future__ import annotations

import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.export.config import ExportParams
from deepmetric.export.stage import check_input_spec, export_stage
from deepmetric.training.config import InputConfig


def test_export_stage_subsamples_and_reports(setup, torchscript_onnx):
    root, manifest, method, spec = setup
    _, report = export_stage(method, spec, manifest, root, ExportParams(exporter="torchscript", max_images=7),
                             ImageLimits(max_pixels=10**7))
    assert report["images"] == 7 and report["exporter"] == "torchscript" and report["onnx_bytes"] > 0


def test_input_spec_mismatch_is_refused():
    with pytest.raises(ValueError, match="model.crop"):
        check_input_spec(InputConfig(resize=32, crop=32), InputConfig(resize=64, crop=64), "the model file")
