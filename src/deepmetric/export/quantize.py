"""int8 ONNX from the fp32 export (onnxruntime.quantization), and its parity report against the fp32 model.

- ``static``: activations and weights int8 (QDQ format, per-channel weights), activation ranges calibrated on
  a sample of training-split images that went through the evaluation transform; ONNX Runtime fuses the QDQ pairs
  into integer kernels (QLinearConv, …). The preprocessing at the top of the graph and the L2 norm at the end
  stay float: only ``Conv``, ``MatMul`` and ``Gemm`` are quantized.
- ``dynamic``: int8 weights, activation ranges computed per batch at run time (no calibration).

The input spec and every ``deepmetric.*`` metadata entry are carried over; ``deepmetric.precision`` says
``int8`` and ``deepmetric.quantization`` how. `int8_report` measures what it cost (Recall@1, MAP@R on the test
images, both models embedded the same way) and what it bought (file size, latency at batch 1, throughput at
batch 32, the two interleaved in the same process).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.export.onnx_export import META_PREFIX

QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]


class QuantizationError(RuntimeError):
    """The int8 model could not be made, or loses more accuracy than allowed."""


class _Calibration:
    """onnxruntime CalibrationDataReader over uint8 NHWC batches."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str) -> None:
        self._batches, self._name = batches, input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: np.ascontiguousarray(batch)}


def _preprocess(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference + graph optimisation) before quantization; the
    model as it is when the dynamic-shape graph defeats the symbolic shape inference."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
        return dst
    except Exception:
        try:
            quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
            return dst
        except Exception:
            return src


def quantize_onnx(
    onnx_bytes: bytes,
    mode: str = "static",
    calibration: Iterator[np.ndarray] | None = None,
    *,
    per_channel: bool = True,
    calibration_method: str = "minmax",
    reduce_range: bool = False,
    op_types: Sequence[str] | None = tuple(QUANTIZED_OPS),
) -> bytes:
    """int8 ONNX bytes of an fp32 export. ``calibration`` (static mode): uint8 NHWC batches of training images.
    ``op_types``: the operators to quantize (None: every one onnxruntime can)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in ("static", "dynamic"):
        raise QuantizationError(f"unknown quantization mode {mode!r}; use 'static' or 'dynamic'")
    if mode == "static" and calibration is None:
        raise QuantizationError("static quantization needs calibration images")
    ops = list(op_types) if op_types is not None else None
    fp32 = onnx.load_from_string(onnx_bytes)
    meta = {p.key: p.value for p in fp32.metadata_props}
    input_name = fp32.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="deepmetric-quant-") as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        model_in = _preprocess(src, pre)
        if mode == "dynamic":
            quantize_dynamic(str(model_in), str(out), op_types_to_quantize=ops, per_channel=per_channel,
                             reduce_range=reduce_range, weight_type=QuantType.QInt8)
        else:
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[calibration_method]
            quantize_static(str(model_in), str(out), _Calibration(iter(calibration), input_name),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=ops, per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=method)
        model = onnx.load(str(out))
    meta.update({META_PREFIX + "precision": "int8",
                 META_PREFIX + "quantization": f"{mode}" + (f" ({calibration_method}, QDQ)" if mode == "static" else "")
                 + (", per-channel" if per_channel else "")})
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def embed_all(session: Any, batches: Sequence[np.ndarray]) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: b})[0] for b in batches]).astype(np.float32)


def retrieval(embeddings: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Leave-one-out Recall@1 and MAP@R (the evaluation stage's definitions)."""
    from deepmetric.evaluation.metrics import evaluate_embeddings

    m = evaluate_embeddings(embeddings, labels, ks=(1,), with_nmi=False)
    return {"recall@1": m["recall@1"], "map@r": m["map@r"]}


def timing(sessions: dict[str, Any], image: np.ndarray, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Median latency of ``batch`` images per call, the sessions interleaved call by call (same machine state)."""
    x = np.ascontiguousarray(np.repeat(image[None], batch, axis=0))
    names = {k: s.get_inputs()[0].name for k, s in sessions.items()}
    for k, s in sessions.items():  # warm-up
        for _ in range(3):
            s.run(None, {names[k]: x})
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {names[k]: x})
            samples[k].append(time.perf_counter() - t0)
    return {k: {"median_ms": 1000 * float(np.median(v)), "images_per_s": batch / float(np.median(v))}
            for k, v in samples.items()}


def int8_report(fp32_bytes: bytes, int8_bytes: bytes, batches: Sequence[np.ndarray], labels: np.ndarray, *,
                threads: int = 0, repeats: int = 20) -> dict[str, Any]:
    """int8 vs fp32 on the same images: retrieval metrics, agreement, size, CPU latency and throughput."""
    from deepmetric.export.parity import ort_session

    sessions = {"fp32": ort_session(fp32_bytes, threads), "int8": ort_session(int8_bytes, threads)}
    emb = {k: embed_all(s, batches) for k, s in sessions.items()}
    metrics = {k: retrieval(v, labels) for k, v in emb.items()}
    cos = np.sum(emb["fp32"] * emb["int8"], axis=1)
    image = np.concatenate(batches)[0]
    t1 = timing(sessions, image, 1, repeats)
    t32 = timing(sessions, image, 32, max(3, repeats // 4))
    return {
        "images": int(len(labels)),
        "fp32": metrics["fp32"],
        "int8": metrics["int8"],
        "recall@1_drop_points": 100 * (metrics["fp32"]["recall@1"] - metrics["int8"]["recall@1"]),
        "map@r_drop_points": 100 * (metrics["fp32"]["map@r"] - metrics["int8"]["map@r"]),
        "cosine_fp32_int8_min": float(cos.min()),
        "cosine_fp32_int8_mean": float(cos.mean()),
        "bytes_fp32": len(fp32_bytes),
        "bytes_int8": len(int8_bytes),
        "size_ratio": len(int8_bytes) / len(fp32_bytes),
        "latency_b1_ms": {k: round(v["median_ms"], 3) for k, v in t1.items()},
        "throughput_b32_images_per_s": {k: round(v["images_per_s"], 1) for k, v in t32.items()},
        "speedup_b1": t1["fp32"]["median_ms"] / t1["int8"]["median_ms"],
        "speedup_b32": t32["int8"]["images_per_s"] / t32["fp32"]["images_per_s"],
        "threads": threads or os.cpu_count(),
    }
