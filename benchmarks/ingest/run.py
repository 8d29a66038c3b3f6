"""Ingest + validate of a catalogue in the `folder` layout against the same images in Stanford Online Products'
layout, measured in one run.

    nice -n 10 .venv/bin/python benchmarks/ingest/run.py [--images 100000] [--workdir /tmp/deepmetric-bench-ingest]

Generates (once, reused when present) small distinct JPEGs (32x32) in SOP's layout — category folders,
Ebay_train.txt / Ebay_test.txt, 5 images per product — and the same files hard-linked into the folder layout
(`folder/<category>/<product>/<k>.jpg`: nested class folders, no split folders, so the split is the class hash).
Both layouts therefore decode exactly the same bytes. Then, per layout, it times the library calls of the
`ingest` stage (`read_dataset` + `build_manifest`: list, read, sha256 and fully decode every file in worker
processes) and of the `validate` stage (`validate_with_docs`: the file check, the great-expectations suite and its
data docs), with their progress bars. great-expectations is imported before any timing, and the layouts run in
the order SOP, folder, folder, SOP (each figure is the mean of its two runs), so neither gains from going second.
The folder layout is then run once more with `decode_check: sample`. Results: one JSON object (stdout, and --out).
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
PER_CLASS = 5


def generate(root: Path, images: int, size: int = 32) -> None:
    """SOP's layout under ``root/sop`` and the same files hard-linked into ``root/folder``."""
    sop, folder = root / "sop", root / "folder"
    if (sop / "Ebay_test.txt").is_file() and (folder / ".complete").is_file():
        return
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    n_classes = images // PER_CLASS
    header = "image_id class_id super_class_id path"
    train, test = [header], [header]
    image_id = 0
    t0 = time.perf_counter()
    for c in range(1, n_classes + 1):
        cat = (c - 1) % len(CATEGORIES)
        product = 200000000000 + c
        (sop / f"{CATEGORIES[cat]}_final").mkdir(parents=True, exist_ok=True)
        (folder / CATEGORIES[cat] / str(product)).mkdir(parents=True, exist_ok=True)
        for k in range(PER_CLASS):
            image_id += 1
            noise = rng.integers(-40, 40, size=(size, size, 3))
            arr = np.clip(base.astype(np.int64) + noise, 0, 255).astype(np.uint8)  # distinct bytes per image
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, "JPEG", quality=90)
            rel = f"{CATEGORIES[cat]}_final/{product}_{k}.JPG"
            (sop / rel).write_bytes(buf.getvalue())
            os.link(sop / rel, folder / CATEGORIES[cat] / str(product) / f"{k}.jpg")
            (train if c <= n_classes // 2 else test).append(f"{image_id} {c} {cat + 1} {rel}")
    (sop / "Ebay_train.txt").write_text("\n".join(train) + "\n")
    (sop / "Ebay_test.txt").write_text("\n".join(test) + "\n")
    (folder / ".complete").write_text("")  # hidden: skipped (and counted) by the folder reader
    print(f"generated {image_id} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def measure(name: str, root: Path, params: dict, workers: int, **validate) -> dict:
    from deepmetric.data.manifest import build_manifest
    from deepmetric.data.readers import read_dataset
    from deepmetric.validation import ValidateParams, failure_summary, validate_with_docs

    t0 = time.perf_counter()
    records = read_dataset(name, root, params)
    t_read = time.perf_counter() - t0
    manifest, report = build_manifest(records, root, bad_files="fail", workers=workers)
    t_ingest = time.perf_counter() - t0
    t1 = time.perf_counter()
    vreport, docs = validate_with_docs(manifest, root, name, ValidateParams(workers=workers, **validate))
    t_validate = time.perf_counter() - t1
    if not vreport["success"]:
        print(failure_summary(vreport), file=sys.stderr)
    total = t_ingest + t_validate
    return {
        "images": len(manifest),
        "classes": int(manifest["label"].nunique()),
        "read_listing_s": round(t_read, 2),
        "ingest_s": round(t_ingest, 2),
        "validate_s": round(t_validate, 2),
        "validate_files_s": vreport["seconds"]["files"],
        "total_s": round(total, 2),
        "ms_per_image": round(1000 * total / len(manifest), 4),
        "validation_success": vreport["success"],
        "checks": vreport["checks_evaluated"],
        "skipped": report["skipped"],
        "data_docs_files": len(docs),
    }


def mean_of(runs: list[dict]) -> dict:
    """The first run's figures, its times replaced by the mean of the runs (each run kept under "runs")."""
    out = dict(runs[0])
    for k in ("read_listing_s", "ingest_s", "validate_s", "validate_files_s", "total_s", "ms_per_image"):
        out[k] = round(float(np.mean([r[k] for r in runs])), 4)
    out["runs"] = [{k: r[k] for k in ("ingest_s", "validate_s", "total_s")} for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--workdir", default="/tmp/deepmetric-bench-ingest")
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    root = Path(args.workdir)
    generate(root, args.images)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    import great_expectations  # noqa: F401  (its ~3 s import is paid before any timing)

    # A generated half of SOP: its published-count checks would (rightly) fail, so they are off here.
    runs = {"sop": [], "folder": []}
    for layout in ("sop", "folder", "folder", "sop"):
        if layout == "sop":
            runs[layout].append(measure("sop", root / "sop", {"val_classes": 0.1}, args.workers, known_counts=False))
        else:
            runs[layout].append(measure("products", root / "folder", {"layout": "folder", "val_classes": 0.1},
                                        args.workers))
    sop, folder = (mean_of(runs[k]) for k in ("sop", "folder"))
    sample = measure("products", root / "folder", {"layout": "folder", "val_classes": 0.1}, args.workers,
                     decode_check="sample")
    result = {
        "started": started,
        "sop_layout": sop,
        "folder_layout": folder,
        "folder_layout_decode_sample": sample,
        "folder_vs_sop_per_image": round(folder["ms_per_image"] / sop["ms_per_image"], 3),
        "folder_sample_vs_sop_per_image": round(sample["ms_per_image"] / sop["ms_per_image"], 3),
        "workers": args.workers or os.cpu_count(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "python": platform.python_version(),
        "niceness": os.nice(0),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
