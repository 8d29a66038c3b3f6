"""Issue 22's gallery-update goal, measured: adding 1,000 images to a 10^6 × 128-d gallery bundle costs at most 2×
the time the bundle's model takes to embed them, and at most 100 MB of memory beyond the loaded bundle.

    .venv/bin/python benchmarks/index/update.py                      # 10^6 × 128-d, `auto` and Flat (README.md)
    .venv/bin/python benchmarks/index/update.py --n 100000           # smaller

The bundle: the project's model (`conf/base/parameters_train.yml`: untrained ResNet-18, 64 px input, 128-d
embedding, exported to ONNX as the export stage does) and a gallery of ``--n`` synthetic vectors (the two-level
mixture of ``run.py``) in the index `index.factory` gives (``auto``: the rule of `deepmetric.index.auto` at that
size; ``Flat``), written by the one bundle writer and sealed like any bundle; no thumbnails (10^6 of them would
not fit this machine's disk next to the rest). The added images: ``--add`` distinct 96 × 96 noise PNGs.

Each figure comes from its own fresh process (``--rounds`` of each, alternated; medians reported), as an operator runs ``deepmetric gallery add``:
- ``embed``: `load_bundle` (checksums streamed, index memory-mapped), then `embed_items` of the added images — the
  decode, evaluation transform and ONNX model that the update itself runs — timed alone;
- ``update``: `update_gallery(bundle, new folder, add=images)` timed whole (load and verify the parent, embed,
  the duplicate search of the gallery, the new segment, hard links, the verification of the new version).
Memory: the process's anonymous memory (``RssAnon``: what is allocated, not the mapped index file) sampled every
5 ms; the update's peak above its start, against the same for `load_bundle` alone (the loaded bundle: model,
id table, the index where it cannot be mapped). Threads: onnxruntime and faiss as configured by default.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(PROJECT / "src"))
sys.path.insert(0, str(PROJECT))

from run import centres, generate, mem  # noqa: E402


class Peak:
    """The highest RssAnon of this process while the block runs, sampled every 5 ms."""

    def __enter__(self) -> Peak:
        self.start = mem()["RssAnon"]
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, mem()["RssAnon"])
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, mem()["RssAnon"])

    @property
    def above_mb(self) -> float:
        return round((self.peak - self.start) / 2 ** 20, 1)


def model_onnx(dim: int) -> bytes:
    """The project's model (untrained: the weights do not change the cost) with a ``dim``-d embedding, as ONNX."""
    import torch
    import yaml

    from deepmetric.export.onnx_export import export_onnx
    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.model_io import build_method, load_model, make_payload

    params = yaml.safe_load((PROJECT / "conf/base/parameters_train.yml").read_text())
    torch.manual_seed(0)
    cfg, mp = parse_train({**params["train"], "embedding_dim": dim,
                           "backbone": {**params["train"]["backbone"], "pretrained": False, "weights_path": None}})
    method = build_method(cfg, mp, num_classes=100).eval()
    method, spec = load_model(make_payload(method, cfg, InputConfig(**params["model"]), num_classes=100))
    return export_onnx(method, spec)


def make_bundle(dest: Path, work: Path, n: int, dim: int, factory: str, onnx: bytes) -> dict:
    """A bundle of ``n`` synthetic vectors in ``factory``'s index, sealed like any bundle (a small real bundle of
    the same model gives the manifest; its index and ids are replaced)."""
    import pandas as pd

    from deepmetric.bundle.format import IDS_FILE, INDEX_FILE, MODEL_FILE, sha256
    from deepmetric.bundle.reader import read_manifest
    from deepmetric.bundle.writer import seal, write_bundle
    from deepmetric.index.build import build_index, serialize_index
    from deepmetric.index.config import IndexParams
    from deepmetric.index.gallery import resolve_index
    from tests.deploy_fixtures import make_bundle as seed_bundle
    from tests.deploy_fixtures import make_dataset

    seed = work / "seed"
    if not seed.exists():
        seed_bundle(seed, work / "seed_images", make_dataset(work / "seed_images", train_classes=0), onnx,
                    bundle={"thumbnails": {"enabled": False}})
    c, spread, _ = centres(n, dim, 0)
    x, labels = generate(c, spread, n, np.random.default_rng(1))
    x = x.astype(np.float32)
    chosen = resolve_index(IndexParams(factory=factory), n, dim)
    auto = chosen["auto"] or {}
    t0 = time.perf_counter()
    index = build_index(x, chosen["factory"], chosen["search_params"], chosen["ef_construction"],
                        train_size=auto.get("train_size"), polysemous_training=None if auto.get(
                            "polysemous_training") is None else bool(auto["polysemous_training"]))
    build_s = time.perf_counter() - t0
    del x
    index_bytes = serialize_index(index)
    del index
    ids = pd.DataFrame({"id": np.arange(n, dtype=np.int64), "label": labels.astype(np.int64),
                        "class_name": [f"class_{v}" for v in labels], "path": [f"synthetic/{i}.png" for i in range(n)]})
    buf = io.BytesIO()
    ids.to_parquet(buf, index=False)
    manifest = read_manifest(seed)
    manifest.update(gallery_size=n, index_factory=chosen["factory"], search_params=chosen["search_params"],
                    index_version=sha256(index_bytes)[:12], index_report={})
    manifest["lineage"] = {**manifest["lineage"], "index_sha256": sha256(index_bytes), "next_id": n}
    payload = {MODEL_FILE: onnx, INDEX_FILE: index_bytes, IDS_FILE: buf.getvalue()}
    write_bundle(dest, seal(manifest, payload), payload)
    old = time.time() - 3600  # as a bundle sits on a host (not just written)
    for p in dest.iterdir():
        os.utime(p, (old, old))
    return {"factory": chosen["factory"], "search_params": chosen["search_params"], "build_s": round(build_s, 1),
            "index_mb": round(len(index_bytes) / 2 ** 20, 1)}


def make_images(folder: Path, count: int) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        p = folder / f"add-{i:05d}.png"
        Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def stage(mode: str, bundle_dir: str, images_dir: str, out_dir: str) -> dict:
    import faiss  # noqa: F401  (imported before the baseline: its own memory is not the update's)
    import onnxruntime  # noqa: F401

    from deepmetric.bundle.gallery import NewItem, embed_items, update_gallery
    from deepmetric.bundle.reader import load_bundle
    from deepmetric.data.images import ImageLimits

    items = [NewItem(str(p), 1) for p in sorted(Path(images_dir).glob("*.png"))]
    if mode == "embed":
        with Peak() as loading:
            t0 = time.perf_counter()
            bundle = load_bundle(bundle_dir)
            load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        embed_items(bundle, items, ImageLimits())
        return {"load_s": round(load_s, 2), "embed_s": round(time.perf_counter() - t0, 2),
                "load_anon_mb": loading.above_mb}
    import deepmetric.bundle.gallery as gallery

    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapped(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - t, 2)
        return wrapped

    # where the time goes (the functions update_gallery calls, timed in place; write includes the verifying load)
    for name, attr in (("load", "load_bundle"), ("embed", "embed_items"), ("duplicates", "_duplicates"),
                       ("write_and_verify", "write_bundle")):
        setattr(gallery, attr, timed(name, getattr(gallery, attr)))
    with Peak() as peak:
        t0 = time.perf_counter()
        summary = update_gallery(bundle_dir, out_dir, add=items)
        wall = time.perf_counter() - t0
    written = sum(p.stat().st_size for p in Path(out_dir).iterdir() if p.stat().st_nlink == 1)
    phases["load"] = round(phases["load"] - phases["write_and_verify"], 2)  # the verifying load is inside write
    return {"update_s": round(wall, 2), "update_anon_mb": peak.above_mb, "phases_s": phases,
            "segments": summary["segments"], "compacted": summary["compacted"],
            "written_mb": round(written / 2 ** 20, 2), "gallery_size": summary["gallery_size"]}


def run_stage(*args: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--stage", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if proc.returncode:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10 ** 6)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--add", type=int, default=1000)
    ap.add_argument("--factories", nargs="+", default=["auto", "Flat"])
    ap.add_argument("--rounds", type=int, default=3, help="embed + update processes per factory (medians reported)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--out", default=str(HERE / "update_results.json"))
    ap.add_argument("--stage", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        print(json.dumps(stage(*args.stage)))
        return 0
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        onnx = model_onnx(args.dim)
        images = work / "images"
        make_images(images, args.add)
        results = []
        for factory in args.factories:
            bundle = work / f"bundle-{factory}"
            built = make_bundle(bundle, work, args.n, args.dim, factory, onnx)
            rounds = []
            for _ in range(args.rounds):  # alternated, so both see the same load of the shared machine
                embed = run_stage("embed", str(bundle), str(images), "-")
                update = run_stage("update", str(bundle), str(images), str(work / f"v-{factory}"))
                shutil.rmtree(work / f"v-{factory}")
                rounds.append({**embed, **update,
                               "ratio": round(update["update_s"] / embed["embed_s"], 2),
                               "anon_mb_beyond_loaded_bundle": round(update["update_anon_mb"]
                                                                     - embed["load_anon_mb"], 1)})
            median = {key: round(float(np.median([r[key] for r in rounds])), 2)
                      for key in ("embed_s", "update_s", "ratio", "anon_mb_beyond_loaded_bundle", "load_s")}
            row = {"n": args.n, "dim": args.dim, "added": args.add, **built, "median": median, "rounds": rounds}
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(bundle)
        command = " ".join(["benchmarks/index/update.py", *(argv or sys.argv[1:])])
        Path(args.out).write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "results": results},
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
