"""Wrap a method's export module so the ONNX graph takes raw images, and export it with torch.onnx.

The graph's input ``images`` is ``uint8 [batch, height, width, 3]`` (NHWC, what `eval_image` returns, stacked);
batch, height and width are dynamic. Inside: NHWC → NCHW, `Normalize` (float, bilinear resize to crop×crop when
the size differs, mean/std), the method's test embedding, L2 normalisation. Output ``embeddings`` is
``float32 [batch, dim]``. The input spec travels inside the file as ONNX metadata (``deepmetric.*`` keys).
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.models.preprocess import Normalize

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
META_PREFIX = "deepmetric."


class ExportModule(nn.Module):
    """uint8 NHWC images → L2-normalised embeddings (what the ONNX graph computes)."""

    def __init__(self, embedder: nn.Module, input_cfg: Any) -> None:
        super().__init__()
        self.normalize = Normalize(input_cfg.mean, input_cfg.std, size=input_cfg.crop)
        self.embedder = embedder
        self.crop = int(input_cfg.crop)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2)
        x = self.normalize(x)
        return F.normalize(self.embedder(x), dim=-1)


def onnx_metadata(input_cfg: Any, method_name: str, embedding_dim: int, exporter: str,
                  weights_sha256: str | None = None, backbone: dict[str, Any] | None = None) -> dict[str, str]:
    spec = {
        "layout": "NHWC",
        "dtype": "uint8",
        "resize": int(input_cfg.resize),
        "crop": int(input_cfg.crop),
        "mean": [float(v) for v in input_cfg.mean],
        "std": [float(v) for v in input_cfg.std],
    }
    return {
        META_PREFIX + "input": json.dumps(spec, sort_keys=True),
        META_PREFIX + "method": method_name,
        META_PREFIX + "embedding_dim": str(int(embedding_dim)),
        META_PREFIX + "exporter": exporter,
        META_PREFIX + "torch": torch.__version__,
        # The weights this graph was exported from (deepmetric.training.model_io.weights_sha256): the bundle
        # stage matches it against the metrics it ships (metrics.json's model_weights_sha256).
        **({META_PREFIX + "weights_sha256": weights_sha256} if weights_sha256 else {}),
        # The backbone: family, name and the sha256 of the weights file training started from
        # (`Backbone.provenance`); the bundle manifest copies it.
        **({META_PREFIX + "backbone": json.dumps(backbone, sort_keys=True)} if backbone else {}),
    }


def _example(crop: int) -> torch.Tensor:
    # Not crop×crop on purpose: Normalize resizes only when the size differs, so tracing with another size puts
    # the resize into the graph (it is an exact identity for crop×crop input). Batch 2: batch 1 gets specialised.
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, crop + 3, crop + 1, 3), dtype=torch.uint8, generator=g)


def _export_dynamo(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=65536)
    height = torch.export.Dim("height", min=2, max=16384)
    width = torch.export.Dim("width", min=2, max=16384)
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes={"images": {0: batch, 1: height, 2: width}},
        external_data=False,
        verbose=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=False)
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name != "model.onnx"]
        if leftovers:
            raise RuntimeError(f"the dynamo exporter wrote external data {leftovers}; model.onnx must be self-contained")
        return path.read_bytes()


def _export_torchscript(module: nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarning on Normalize's size test and the deprecation notice
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "height", 2: "width"}, OUTPUT_NAME: {0: "batch"}},
        )
    return buf.getvalue()


def export_onnx(method: nn.Module, input_cfg: Any, exporter: str = "dynamo", opset: int = 18) -> bytes:
    """ONNX bytes of `method.export_module()` wrapped in `ExportModule` (self-contained, input spec in metadata)."""
    import onnx

    module = ExportModule(method.export_module(), input_cfg).eval()
    example = _example(int(input_cfg.crop))
    with torch.no_grad():
        dim = int(module(example[:1]).shape[-1])
    if exporter == "dynamo":
        raw = _export_dynamo(module, example, opset)
    elif exporter == "torchscript":
        raw = _export_torchscript(module, example, opset)
    else:
        raise ValueError(f"unknown exporter {exporter!r}; use 'dynamo' or 'torchscript'")
    model = onnx.load_from_string(raw)
    from deepmetric.training.model_io import weights_sha256

    backbone = getattr(method, "backbone", None)
    meta = onnx_metadata(input_cfg, getattr(method, "name", type(method).__name__), dim, exporter,
                         weights_sha256(method.state_dict()),
                         backbone.provenance() if hasattr(backbone, "provenance") else None)
    kept = [p for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def read_metadata(onnx_bytes: bytes) -> dict[str, str]:
    """The ``deepmetric.*`` metadata of an exported model (keys without the prefix)."""
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


