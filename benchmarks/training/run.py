"""Training throughput of the real loop (`deepmetric.training.loop.fit`) on synthetic CUB-like JPEGs.

    .venv/bin/python benchmarks/training/run.py                      # CPU table (this machine), ~1 h on 2 cores
    .venv/bin/python benchmarks/training/run.py --mode gpu           # GPU table, comparable to issue 8's figures
    .venv/bin/python benchmarks/training/run.py --mode gpu --device cpu --tiny   # dry run of the GPU matrix

Writes a few thousand JPEGs (~500×375, smooth random scenes, 100 classes) under --data once, then measures, in one
process and one run so that every figure is a ratio against a peer measured minutes apart:

1. the data path alone (decode + augment → uint8 batches, no model): the old main-thread loop
   (`_Context.load` before issue 8, kept below as `LegacyLoader`) vs the DataLoader path at 0/1/2… workers, cache
   off/raw/jpeg;
2. training images/s of the full loop (`fit`, epoch 2, after warm-up) for ResNet-18 and ResNet-50 at 224 px:
   old path vs new path at 0/1/2 workers; fp32 vs bf16; channels_last; torch.compile;
3. evaluation embedding images/s with 0 vs N workers;
4. peak resident memory of reading every image through the old in-memory dict vs the on-disk cache.

Results go to --out (JSON) and a Markdown table on stdout (pasted into benchmarks/training/README.md).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFilter

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.transforms import InputSpec, train_transform
from deepmetric.evaluation.embed import embed_dataset, method_embedder
from deepmetric.training import loop as loop_module
from deepmetric.training.config import parse_train
from deepmetric.runtime import resolve_workers
from deepmetric.training.data import TrainLoader, choose_cache, open_images
from deepmetric.training.loop import fit
from deepmetric.training.model_io import build_method


# --- data -------------------------------------------------------------------------------------------------------
def make_dataset(root: Path, n_images: int, n_classes: int = 100, seed: int = 0) -> pd.DataFrame:
    """CUB-like JPEGs: sizes around 500×375 (portrait and landscape), smooth scenes, ~40 KB each. Cached."""
    listing = root / "manifest.parquet"
    if listing.exists():
        m = pd.read_parquet(listing)
        if len(m) == n_images:
            return m
    rng = np.random.default_rng(seed)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        c = i % n_classes
        w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
        w, h = int(w * rng.uniform(0.85, 1.1)), int(h * rng.uniform(0.85, 1.1))
        base = rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
            d.ellipse([x0, y0, x0 + int(rng.integers(20, 160)), y0 + int(rng.integers(20, 160))],
                      fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        img = img.filter(ImageFilter.GaussianBlur(1.2))
        rel = f"images/{c:03d}/{i:06d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel, quality=90)
        data = (root / rel).read_bytes()
        rows.append({"path": rel, "label": c, "class_name": f"class{c:03d}", "split": "train", "role": "both",
                     "width": w, "height": h, "sha256": hashlib.sha256(data).hexdigest(), "dataset": "synthetic"})
    m = pd.DataFrame(rows)
    m.to_parquet(listing, index=False)
    return m


# --- the data path before issue 8 ---------------------------------------------------------------------------------
class LegacyLoader:
    """What `_Context.load` did before: decode + augment every image of a batch in the training process, one after
    the other (`torch.stack([dataset[i] for i in indices])`), torchvision v2 RandomResizedCrop on the PIL image."""

    def __init__(self, images: ManifestImages, transform, device, *args, **kwargs) -> None:
        from torchvision.transforms import v2

        t = transform
        steps = [v2.RandomResizedCrop(t.crop, scale=t.scale, ratio=t.ratio, antialias=True)]
        if t.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.PILToTensor(), v2.ToDtype(torch.uint8)]
        pipeline = v2.Compose(steps)
        self.images = ManifestImages(images.root, images.paths, images.spec, transform=lambda im: pipeline(im),
                                     limits=images.limits)  # no cache: the dict cache is what issue 8 removed
        self.device = device

    def epoch(self, batches, seed, epoch, first_step=0, share=None):
        for b in batches:
            yield list(b), torch.stack([self.images[int(i)] for i in b]).to(self.device)

    def load(self, indices, seed, step):
        return torch.stack([self.images[int(i)] for i in indices]).to(self.device)

    def close(self) -> None:
        pass


# --- measurements -------------------------------------------------------------------------------------------------
def data_path_rate(manifest, root, spec, batches, workers, cache_mode, cache_dir, legacy=False) -> float:
    from deepmetric.training.data import CacheConfig

    cache = choose_cache(CacheConfig(mode=cache_mode), cache_dir, spec, manifest)
    images = open_images(str(root), manifest, spec, cache, None, max(workers, 1), False)
    t = train_transform(spec, scale=(0.16, 1.0), hflip=True)
    loader = (LegacyLoader(images, t, torch.device("cpu")) if legacy
              else TrainLoader(images, t, torch.device("cpu"), workers))
    try:
        for _ in loader.epoch(batches[:2], 0, 0):  # warm-up (worker start)
            pass
        t0 = time.perf_counter()
        n = sum(len(idx) for idx, _ in loader.epoch(batches, 0, 1))
        return n / (time.perf_counter() - t0)
    finally:
        loader.close()


def train_rate(manifest, root, backbone, size, batch, steps, workers, precision="fp32", channels_last=False,
               compile_=False, legacy=False, cache_mode="auto", cache_dir=None, device="cpu", decode="cpu") -> float:
    cfg, params = parse_train({
        "method": "margin", "epochs": 2, "steps_per_epoch": steps, "embedding_dim": 128, "progress": False,
        "batch": {"classes_per_batch": batch // 4, "samples_per_class": 4}, "device": device,
        "backbone": {"name": backbone}, "augment": {"scale_min": 0.16, "hflip": True},
        "num_workers": workers, "precision": precision, "channels_last": channels_last, "compile": compile_,
        "cache": {"mode": cache_mode}, "decode": decode,
    })
    spec = InputSpec(resize=int(size * 256 / 224), crop=size)
    original = loop_module.TrainLoader
    if legacy:
        loop_module.TrainLoader = LegacyLoader
    try:
        res = fit(manifest, str(root), cfg, params, spec, cache_dir=cache_dir)
    finally:
        loop_module.TrainLoader = original
    return float(res.log[-1]["images_per_s"])  # epoch 2: after worker start-up, compilation, cudnn autotune


# ViT-S/16 rows of --mode gpu. Reference, not measured here: timm's own benchmark (results/benchmark-train-amp-nchw-
# pt112-cu113-rtx3090.csv) trains vit_small_patch16_224 at 1,053 img/s (AMP, batch 384) and resnet50 at 826 img/s
# (AMP, batch 512) on an RTX 3090: ViT-S/16 1.27× ResNet-50.
VIT = "timm/vit_small_patch16_224"


def vit_rate(fused_attention: bool, *args, **kwargs) -> float:
    """`train_rate` of a timm ViT built with (True) PyTorch's scaled_dot_product_attention or (False) timm's
    explicit attention (`timm.layers.set_fused_attn`, read when the model is built)."""
    from timm.layers import set_fused_attn

    set_fused_attn(fused_attention)
    try:
        return train_rate(*args, **kwargs)
    finally:
        set_fused_attn(True)


def eval_rate(manifest, root, backbone, size, workers, device="cpu", n=512) -> float:
    cfg, params = parse_train({"method": "margin", "backbone": {"name": backbone}, "embedding_dim": 128})
    spec = InputSpec(resize=int(size * 256 / 224), crop=size)
    method = build_method(cfg, params, 10).to(device).eval()
    ds = ManifestImages(str(root), manifest["path"].iloc[:n], spec)
    t0 = time.perf_counter()
    embed_dataset(method_embedder(method, spec.mean, spec.std), ds, 64, torch.device(device), num_workers=workers)
    return n / (time.perf_counter() - t0)


def rss_of_reading(manifest, root, spec, how: str, cache_dir) -> float:
    """Peak RSS (MB) of a child process that reads every image once: the old dict cache vs the disk cache."""
    import subprocess

    # VmHWM of the child's own address space (ru_maxrss would inherit the parent's high-water mark over exec)
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from run import _read_all
_read_all({str(root)!r}, {how!r}, {str(cache_dir)!r}, {spec.resize}, {spec.crop})
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(int(hwm) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _read_all(root: str, how: str, cache_dir: str, resize: int, crop: int) -> None:
    from deepmetric.data.images import open_image, safe_join
    from deepmetric.training.data import CacheConfig

    manifest = pd.read_parquet(Path(root) / "manifest.parquet")
    spec = InputSpec(resize=resize, crop=crop)
    if how == "none":  # the interpreter, torch and the manifest alone: the baseline of the other rows
        return
    if how == "dict":  # the old `cache_images: true`: every decoded full-size image kept in a dict
        keep = {i: open_image(safe_join(root, p)) for i, p in enumerate(manifest["path"])}
        assert len(keep) == len(manifest)
        return
    cache = choose_cache(CacheConfig(mode=how), cache_dir, spec, manifest)
    images = open_images(root, manifest, spec, cache, None, 0, False)
    for i in range(len(images)):
        images.image(i)


# --- main ---------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--device", default=None, help="default: cpu for --mode cpu, cuda for --mode gpu")
    ap.add_argument("--data", default="data/benchmarks/training_jpegs")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--tiny", action="store_true", help="smallest settings: checks that every variant runs")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = args.device or ("cuda" if args.mode == "gpu" else "cpu")
    root = Path(args.data)
    n_images = 240 if args.tiny else args.images
    manifest = make_dataset(root / f"n{n_images}", n_images)
    root = root / f"n{n_images}"
    cache_dir = Path(args.data) / "cache"
    size = 64 if args.tiny else args.size
    spec = InputSpec(resize=int(size * 256 / 224), crop=size)
    cores = resolve_workers("auto")
    results: dict = {"mode": args.mode, "device": device, "images": n_images, "size": size, "cores": cores,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "load_avg": os.getloadavg()}
    rows: list[tuple[str, str, float]] = []

    def record(group: str, name: str, value: float) -> None:
        rows.append((group, name, value))
        print(f"{group:28s} {name:52s} {value:9.1f}", flush=True)

    labels = manifest["label"].to_numpy()
    from deepmetric.methods.base import BatchConfig, class_balanced_batches

    if args.mode == "cpu":
        bs = 16 if args.tiny else 64
        nb = 3 if args.tiny else 12
        batches = list(class_balanced_batches(labels, BatchConfig(classes_per_batch=bs // 4, samples_per_class=4), 0, nb))
        # 1. the data path alone
        record("data path (img/s)", "old: main-thread decode + v2 crop, no cache", data_path_rate(
            manifest, root, spec, batches, 0, "off", None, legacy=True))
        for w in sorted({0, 1, 2, cores}):
            record("data path (img/s)", f"new: {w} workers, decode JPEG each time (cache off)",
                   data_path_rate(manifest, root, spec, batches, w, "off", None))
        for mode in ("raw", "jpeg"):
            for w in sorted({0, cores}):
                record("data path (img/s)", f"new: {w} workers, cache {mode}",
                       data_path_rate(manifest, root, spec, batches, w, mode, cache_dir))
        # 2. the full loop
        steps = 2 if args.tiny else 4
        for backbone, batch in (("resnet18", 16 if args.tiny else 32), ("resnet50", 8 if args.tiny else 16)):
            g = f"train {backbone} {size}px b{batch} (img/s)"
            record(g, "old path, fp32", train_rate(manifest, root, backbone, size, batch, steps, 0, legacy=True))
            for w in sorted({0, 1, 2}):
                record(g, f"new path, {w} workers, cache auto, fp32",
                       train_rate(manifest, root, backbone, size, batch, steps, w, cache_dir=cache_dir))
            record(g, f"new path, 2 workers, bf16", train_rate(manifest, root, backbone, size, batch, steps, 2,
                                                             "bf16", cache_dir=cache_dir))
            record(g, f"new path, 2 workers, bf16 + channels_last", train_rate(
                manifest, root, backbone, size, batch, steps, 2, "bf16", True, cache_dir=cache_dir))
            record(g, f"new path, 2 workers, fp32 + channels_last", train_rate(
                manifest, root, backbone, size, batch, steps, 2, "fp32", True, cache_dir=cache_dir))
            record(g, f"new path, 2 workers, bf16 + channels_last + compile", train_rate(
                manifest, root, backbone, size, batch, steps, 2, "bf16", True, True, cache_dir=cache_dir))
        # 3. evaluation embedding
        for w in sorted({0, cores}):
            record("evaluation embed resnet50 (img/s)", f"{w} workers",
                   eval_rate(manifest, root, "resnet50", size, w, n=64 if args.tiny else 256))
        # 4. memory
        for how in ("none", "dict", "raw", "jpeg"):
            record("peak RSS reading every image (MB)", {"none": "baseline: interpreter + torch, no image read",
                                                        "dict": "old in-memory dict (cache_images: true)",
                                                        "raw": "new disk cache, raw", "jpeg": "new disk cache, jpeg"}[how],
                   rss_of_reading(manifest, root, spec, how, cache_dir))
    else:
        steps = 2 if args.tiny else 20
        batches_ = (8, 16) if args.tiny else (112, 256)
        workers_ = (1, 2) if args.tiny else (8, 16)
        for batch in batches_:
            g = f"train resnet50 {size}px b{batch} (img/s)"
            record(g, "fp32 (the papers' code style), 8 workers", train_rate(
                manifest, root, "resnet50", size, batch, steps, workers_[0], device=device, cache_dir=cache_dir))
            for w in workers_:
                record(g, f"bf16 + channels_last, {w} workers", train_rate(
                    manifest, root, "resnet50", size, batch, steps, w, "bf16", True, device=device,
                    cache_dir=cache_dir))
            record(g, f"bf16 + channels_last + compile, {workers_[-1]} workers", train_rate(
                manifest, root, "resnet50", size, batch, steps, workers_[-1], "bf16", True, True, device=device,
                cache_dir=cache_dir))
            record(g, f"bf16 + channels_last + compile, gpu decode (jpeg cache), {workers_[-1]} workers", train_rate(
                manifest, root, "resnet50", size, batch, steps, workers_[-1], "bf16", True, True, device=device,
                cache_mode="jpeg", cache_dir=cache_dir, decode="gpu"))
            record(g, f"bf16 + channels_last + compile, gpu decode (files), {workers_[-1]} workers", train_rate(
                manifest, root, "resnet50", size, batch, steps, workers_[-1], "bf16", True, True, device=device,
                cache_mode="off", decode="gpu"))
        for w in (0, workers_[-1]):
            record("evaluation embed resnet50 (img/s)", f"{w} workers, fp32",
                   eval_rate(manifest, root, "resnet50", size, w, device=device, n=64 if args.tiny else 2048))
        # ViT-S/16 (timm): the same margin step; attention through PyTorch's SDPA (flash / memory-efficient kernels
        # on CUDA, timm's default) or timm's plain matmul-softmax attention, for the comparison.
        for batch in batches_:
            g = f"train {VIT} {size}px b{batch} (img/s)"
            record(g, f"fp32, SDPA attention, {workers_[-1]} workers", vit_rate(
                True, manifest, root, VIT, size, batch, steps, workers_[-1], device=device, cache_dir=cache_dir))
            record(g, f"bf16, plain attention, {workers_[-1]} workers", vit_rate(
                False, manifest, root, VIT, size, batch, steps, workers_[-1], "bf16", device=device,
                cache_dir=cache_dir))
            record(g, f"bf16, SDPA (flash) attention, {workers_[-1]} workers", vit_rate(
                True, manifest, root, VIT, size, batch, steps, workers_[-1], "bf16", device=device,
                cache_dir=cache_dir))
            record(g, f"bf16 + compile, SDPA (flash) attention, {workers_[-1]} workers", vit_rate(
                True, manifest, root, VIT, size, batch, steps, workers_[-1], "bf16", False, True, device=device,
                cache_dir=cache_dir))
        record(f"evaluation embed {VIT} (img/s)", f"{workers_[-1]} workers, fp32",
               eval_rate(manifest, root, VIT, size, workers_[-1], device=device, n=64 if args.tiny else 2048))
    results["rows"] = [{"group": g, "variant": n, "value": round(v, 2)} for g, n, v in rows]
    results["load_avg_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print("\n| measurement | variant | value | × first row of its group |\n|---|---|---|---|")
    firsts: dict[str, float] = {}
    for g, n, v in rows:
        firsts.setdefault(g, v)
        print(f"| {g} | {n} | {v:.1f} | {v / firsts[g]:.2f} |")
    gc.collect()


if __name__ == "__main__":
    main()
