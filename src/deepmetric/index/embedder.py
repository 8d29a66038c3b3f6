"""Embed uint8 NHWC images with an exported model through onnxruntime (CPU)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import InputSpec


class OnnxEmbedder:
    """An onnxruntime session over ``model.onnx`` bytes plus the input spec stored in its metadata."""

    def __init__(self, onnx_bytes: bytes, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"onnxruntime cannot load the model: {e}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "deepmetric.input" not in meta:
            raise ValueError("the ONNX model carries no deepmetric input spec (metadata 'deepmetric.input'); "
                             "export it with the export stage")
        self.input_meta: dict[str, Any] = json.loads(meta["deepmetric.input"])
        self.spec = InputSpec(**{k: self.input_meta[k] for k in ("resize", "crop", "mean", "std")})
        self.method = meta.get("deepmetric.method", "")
        self.weights_sha256: str | None = meta.get("deepmetric.weights_sha256")
        inp = self.session.get_inputs()[0]
        if inp.type != "tensor(uint8)" or len(inp.shape) != 4:
            raise ValueError(f"model input {inp.name!r} is {inp.type} {inp.shape}, expected uint8 [N, H, W, 3]")
        self.input_name = inp.name
        self.dim = int(self.embed(np.zeros((1, self.spec.crop, self.spec.crop, 3), dtype=np.uint8)).shape[1])

    def embed(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` → ``float32 [N, dim]`` (L2-normalised inside the graph)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {images.dtype} {images.shape}")
        out = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(images[i : i + batch_size])})[0]
            for i in range(0, len(images), batch_size)
        ]
        if not out:
            return np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


# --- the gallery in shards: each worker process holds one session and embeds contiguous ranges of rows --------
_WORKER: dict[str, Any] = {}


def init_shard_worker(onnx_bytes: bytes, threads: int, root: str, paths: list[str], limits: ImageLimits,
                      batch_size: int, boxes: list | None = None) -> None:
    _WORKER.update(embedder=OnnxEmbedder(onnx_bytes, threads=threads), root=root, paths=paths,
                   limits=limits, batch_size=batch_size, boxes=boxes)


def embed_shard(start: int, stop: int) -> np.ndarray:
    from deepmetric.data.batches import iter_batches

    w = _WORKER
    emb: OnnxEmbedder = w["embedder"]
    boxes = None if w["boxes"] is None else w["boxes"][start:stop]
    parts = [emb.embed(b, w["batch_size"])
             for b in iter_batches(w["root"], w["paths"][start:stop], emb.spec, w["limits"], w["batch_size"], boxes)]
    return np.concatenate(parts) if parts else np.zeros((0, emb.dim), dtype=np.float32)
