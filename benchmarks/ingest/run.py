"""Ingest + validate of a generated 60,000-image dataset in Stanford Online Products' layout.

    .venv/bin/python benchmarks/ingest/run.py [--images 60000] [--workdir /tmp/deepmetric-bench-sop]

Generates (once, reused when present) small JPEGs (32x32, distinct content) in SOP's layout — category
folders, Ebay_train.txt / Ebay_test.txt — then times `read_dataset` + `build_manifest` (ingest) and
`validate_manifest` (validate: every file re-read, decoded and hashed, plus the great-expectations suite),
exactly the library calls of the `ingest` and `validate` stages, with their progress bars.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = ("bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler",
              "table", "toaster")


def generate(root: Path, images: int, per_class: int = 5, size: int = 32) -> None:
    if (root / "Ebay_test.txt").is_file():
        return
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    n_classes = images // per_class
    header = "image_id class_id super_class_id path"
    train, test = [header], [header]
    image_id = 0
    t0 = time.perf_counter()
    for c in range(1, n_classes + 1):
        cat = (c - 1) % len(CATEGORIES)
        folder = root / f"{CATEGORIES[cat]}_final"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            image_id += 1
            noise = rng.integers(-40, 40, size=(size, size, 3))
            arr = np.clip(base.astype(np.int64) + noise, 0, 255).astype(np.uint8)  # distinct bytes per image
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            rel = f"{CATEGORIES[cat]}_final/{200000000000 + c}_{k}.JPG"
            (root / rel).write_bytes(buf.getvalue())
            (train if c <= n_classes // 2 else test).append(f"{image_id} {c} {cat + 1} {rel}")
    (root / "Ebay_train.txt").write_text("\n".join(train) + "\n")
    (root / "Ebay_test.txt").write_text("\n".join(test) + "\n")
    print(f"generated {image_id} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--workdir", default="/tmp/deepmetric-bench-sop")
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    root = Path(args.workdir)
    generate(root, args.images)

    from deepmetric.data.manifest import build_manifest
    from deepmetric.data.readers import read_dataset
    from deepmetric.validation import ValidateParams, failure_summary, validate_with_docs

    t0 = time.perf_counter()
    records = read_dataset("sop", root, {"val_classes": 0.1})
    t_read = time.perf_counter() - t0
    manifest, report = build_manifest(records, root, bad_files="fail", workers=args.workers)
    t_ingest = time.perf_counter() - t0
    t1 = time.perf_counter()
    # A generated half of SOP: the published-count checks would (rightly) fail, so they are off here.
    vreport, docs = validate_with_docs(manifest, root, "sop", ValidateParams(workers=args.workers, known_counts=False))
    t_validate = time.perf_counter() - t1
    if not vreport["success"]:
        print(failure_summary(vreport), file=sys.stderr)
    result = {
        "images": len(manifest),
        "classes": int(manifest["label"].nunique()),
        "read_listing_s": round(t_read, 2),
        "ingest_s": round(t_ingest, 2),
        "validate_s": round(t_validate, 2),
        "validate_files_s": vreport["seconds"]["files"],
        "total_s": round(t_ingest + t_validate, 2),
        "validation_success": vreport["success"],
        "checks": vreport["checks_evaluated"],
        "data_docs_files": len(docs),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
