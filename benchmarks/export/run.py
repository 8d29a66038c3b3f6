"""int8 vs fp32 ONNX: what quantization costs (Recall@1, MAP@R on every test image) and buys (file size, CPU
latency at batch 1, throughput at batch 32), for each quantization variant, measured in one run.

    .venv/bin/python benchmarks/export/run.py --model data/06_models/model.pt \
        --manifest data/02_intermediate/manifest_validated.parquet --data-root data/01_raw/glyphs

The fp32 model is exported exactly as the export stage does (`export.exporter`, default dynamo); each int8
variant is made from it with `deepmetric.export.quantize.quantize_onnx` (static: calibrated on
``--calibration`` evenly spaced training-split images). Every model embeds the same test images; timings
interleave fp32 and the variant call by call in one process (`quantize.timing`), so the ratio holds for the
machine's state at that moment. Prints a markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

VARIANTS = {
    "dynamic": {"mode": "dynamic"},
    "static minmax": {"mode": "static", "calibration_method": "minmax"},
    "static percentile": {"mode": "static", "calibration_method": "percentile"},
    "static minmax, all ops": {"mode": "static", "calibration_method": "minmax", "op_types": None},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="data/06_models/model.pt")
    ap.add_argument("--manifest", default="data/02_intermediate/manifest_validated.parquet")
    ap.add_argument("--data-root", default="data/01_raw/glyphs")
    ap.add_argument("--exporter", default="dynamo")
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--repeats", type=int, default=40, help="batch-1 calls per model (batch 32: a quarter)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()

    import onnxruntime
    import torch

    from deepmetric.data.images import ImageLimits
    from deepmetric.export.images import iter_batches, spaced_subset, test_rows
    from deepmetric.export.onnx_export import export_onnx
    from deepmetric.export.quantize import int8_report, quantize_onnx
    from deepmetric.io.datasets import TorchDataset
    from deepmetric.training.model_io import load_model

    method, spec = load_model(TorchDataset(args.model).load())
    fp32 = export_onnx(method.eval(), spec, exporter=args.exporter)
    manifest = pd.read_parquet(args.manifest)
    test = test_rows(manifest)
    batches = list(iter_batches(args.data_root, list(test["path"]), spec, ImageLimits(), 64))
    train = spaced_subset(manifest[manifest["split"] == "train"].reset_index(drop=True), args.calibration)
    rows = []
    for name in args.variants:
        cfg = dict(VARIANTS[name])
        calibration = (iter_batches(args.data_root, list(train["path"]), spec, ImageLimits(), 64)
                       if cfg["mode"] == "static" else None)
        t0 = time.perf_counter()
        int8 = quantize_onnx(fp32, calibration=calibration, **cfg)
        quantize_s = time.perf_counter() - t0
        report = int8_report(fp32, int8, batches, test["label"].to_numpy(), threads=args.threads,
                             repeats=args.repeats)
        report.update({"variant": name, "quantize_seconds": round(quantize_s, 1)})
        rows.append(report)
        print(f"{name}: done in {quantize_s:.0f} s", file=sys.stderr, flush=True)
    result = {
        "model": args.model, "exporter": args.exporter, "method": getattr(method, "name", "?"),
        "input": {"resize": spec.resize, "crop": spec.crop}, "test_images": int(len(test)),
        "test_classes": int(test["label"].nunique()), "calibration_images": int(len(train)),
        "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cpu": platform.processor()
        or platform.machine(), "cores": os.cpu_count(), "load_average_at_end": os.getloadavg(),
        "variants": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    lines = ["| model | size MB | Recall@1 | MAP@R | Δ R@1 (points) | Δ MAP@R (points) | batch-1 latency ms "
             "(fp32 → int8) | speed-up b1 | batch-32 images/s (fp32 → int8) | speed-up b32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first = result["variants"][0]
    lines.append(f"| fp32 | {first['bytes_fp32'] / 1e6:.1f} | {100 * first['fp32']['recall@1']:.2f} | "
                 f"{100 * first['fp32']['map@r']:.2f} | – | – | – | – | – | – |")
    for r in result["variants"]:
        lines.append(
            f"| int8 {r['variant']} | {r['bytes_int8'] / 1e6:.1f} ({r['size_ratio']:.2f}×) | "
            f"{100 * r['int8']['recall@1']:.2f} | {100 * r['int8']['map@r']:.2f} | "
            f"{-r['recall@1_drop_points']:+.2f} | {-r['map@r_drop_points']:+.2f} | "
            f"{r['latency_b1_ms']['fp32']:.2f} → {r['latency_b1_ms']['int8']:.2f} | {r['speedup_b1']:.2f}× | "
            f"{r['throughput_b32_images_per_s']['fp32']:.0f} → {r['throughput_b32_images_per_s']['int8']:.0f} | "
            f"{r['speedup_b32']:.2f}× |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
