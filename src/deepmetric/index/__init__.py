"""faiss index over the gallery embeddings (computed with the exported ONNX model), and its report."""

from deepmetric.index.build import (
    IndexBuildError,
    apply_search_params,
    build_index,
    deserialize_index,
    evaluate_index,
    read_index_file,
    serialize_index,
)
from deepmetric.index.config import IndexParams
from deepmetric.index.embedder import OnnxEmbedder

__all__ = [
    "IndexBuildError",
    "IndexParams",
    "OnnxEmbedder",
    "apply_search_params",
    "build_index",
    "deserialize_index",
    "evaluate_index",
    "read_index_file",
    "serialize_index",
]
