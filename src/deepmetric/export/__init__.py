"""ONNX export of a trained method (uint8 NHWC images in, L2-normalised embeddings out) and its parity check."""

from deepmetric.export.config import ExportParams
from deepmetric.export.onnx_export import ExportModule, export_onnx, onnx_metadata
from deepmetric.export.parity import ParityError, check_parity

__all__ = ["ExportModule", "ExportParams", "ParityError", "check_parity", "export_onnx", "onnx_metadata"]
