"""Serving benchmark: a bounded load generator on loopback against `deepmetric serve`, and onnxruntime vs PyTorch
eager embedding throughput on the same batch of the same images.

    .venv/bin/python benchmarks/serving/run.py --bundle data/09_deploy/bundle --model data/06_models/model.pt \
        --data-root data/01_raw/glyphs

Without a bundle, ``--make-untrained DIR`` first builds one from an untrained ResNet-18 (project `model` params)
over generated images (say so when quoting the numbers). Every level is bounded by ``--requests`` and
``--seconds``; only 127.0.0.1 is used. Prints a markdown table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def query_images(bundle, data_root: str | None, n: int) -> list[tuple[str, bytes]]:
    """Real gallery files when the dataset is at hand, else generated PNGs of the bundle's input size."""
    if data_root and Path(data_root).is_dir():
        paths = list(bundle.ids["path"])
        step = max(1, len(paths) // n)
        return [(p, (Path(data_root) / p).read_bytes()) for p in paths[::step][:n]]
    from tests.deploy_fixtures import draw_image, png_bytes

    size = (bundle.spec.resize, bundle.spec.resize)
    return [(f"gen{i}.png", png_bytes(draw_image(i % 8, i, size))) for i in range(n)]


def start_server(bundle_dir: str, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "deepmetric.serving.cli", "serve", "--bundle", bundle_dir,
                             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server not healthy after 120 s")


def server_rss_mb(proc: subprocess.Popen) -> float:
    import psutil

    p = psutil.Process(proc.pid)
    procs = [p, *p.children(recursive=True)]
    return sum(q.memory_info().rss for q in procs if q.is_running()) / 2**20


def load_level(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int, seconds: float,
               k: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + seconds

    def worker(wid: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, ctype = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", f"/v1/search?k={k}", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                payload = resp.read()
                dt = time.perf_counter() - t0
                ok = resp.status == 200 and len(json.loads(payload)["results"][0]["neighbors"]) == k
                with lock:
                    (lat.append(dt) if ok else errors.append(f"{resp.status} {payload[:120]!r}"))
            except Exception as e:  # noqa: BLE001 - counted as an error
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"clients": clients, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
            "error_examples": errors[:3], "seconds": round(wall, 2), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def ort_vs_torch(bundle, model_payload: dict, images: np.ndarray, reps: int) -> dict:
    """Throughput of the same batch: onnxruntime (the bundle's model.onnx) vs PyTorch eager (the model file,
    wrapped exactly as exported: uint8 NHWC → normalise → embed → L2)."""
    import torch

    from deepmetric.export.onnx_export import ExportModule
    from deepmetric.training.model_io import load_model

    method, spec = load_model(model_payload)
    module = ExportModule(method.export_module(), spec).eval()
    x = torch.from_numpy(images)

    def t_torch():
        with torch.inference_mode():
            module(x)

    def t_ort():
        bundle.embedder.embed(images, batch_size=len(images))

    out = {}
    fns = {"pytorch_eager": t_torch, "onnxruntime": t_ort}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
        fn()  # warm-up
    # Interleaved, so that both see the same machine load (the box is shared); medians.
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"median_s_per_batch": round(med, 4), "images_per_s": round(len(images) / med, 1)}
    with torch.inference_mode():
        diff = float(np.abs(module(x).numpy() - bundle.embedder.embed(images)).max())
    out["batch"] = int(len(images))
    out["input"] = list(images.shape[1:])
    out["torch_threads"] = torch.get_num_threads()
    out["max_abs_diff"] = diff
    out["ratio_ort_over_torch"] = round(out["onnxruntime"]["images_per_s"] / out["pytorch_eager"]["images_per_s"], 2)
    return out


def make_untrained(dest: Path) -> tuple[Path, dict]:
    """A bundle from an untrained ResNet-18 at the project's `model` params over 512 generated images."""
    import yaml

    from deepmetric.export.onnx_export import export_onnx
    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.model_io import build_method, load_model, make_payload
    from tests.deploy_fixtures import make_bundle, make_dataset

    import torch

    params = yaml.safe_load((PROJECT / "conf/base/parameters_train.yml").read_text())
    torch.manual_seed(0)
    cfg, mp = parse_train({**params["train"], "backbone": {**params["train"]["backbone"], "pretrained": False,
                                                           "weights_path": None}})
    method = build_method(cfg, mp, num_classes=100).eval()
    spec = InputConfig(**params["model"])
    payload = make_payload(method, cfg, spec, num_classes=100)
    method, spec = load_model(payload)
    root = dest.parent / (dest.name + "_images")
    manifest = make_dataset(root, num_classes=64, per_class=8, train_classes=0)
    onnx_bytes = export_onnx(method, spec, exporter="dynamo")
    make_bundle(dest, root, manifest, onnx_bytes, metrics={"note_untrained": 1.0})
    return dest, payload


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="data/09_deploy/bundle")
    ap.add_argument("--model", default="data/06_models/model.pt", help="model file for the PyTorch eager side")
    ap.add_argument("--data-root", default=None, help="dataset root: query with real gallery files")
    ap.add_argument("--make-untrained", default=None, metavar="DIR", help="build an untrained bundle here first")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=300, help="requests per level (bound)")
    ap.add_argument("--seconds", type=float, default=30.0, help="seconds per level (bound)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="ORT vs PyTorch batch size")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()

    import torch

    from deepmetric.serving.bundle import load_bundle

    payload = None
    if args.make_untrained:
        bundle_dir, payload = make_untrained(Path(args.make_untrained))
        args.bundle = str(bundle_dir)
    bundle = load_bundle(args.bundle)
    if payload is None:
        payload = torch.load(args.model, map_location="cpu", weights_only=False)
    imgs = query_images(bundle, args.data_root, 64)
    bodies = [multipart(n, d) for n, d in imgs]

    from deepmetric.data.images import open_image
    from deepmetric.data.transforms import eval_image

    batch = np.stack([eval_image(open_image(d), bundle.spec) for _, d in (imgs * 4)[: args.batch]])
    speed = ort_vs_torch(bundle, payload, batch, args.reps)

    proc, port = start_server(args.bundle, args.workers)
    levels = []
    try:
        rss_idle = server_rss_mb(proc)
        for c in [int(v) for v in args.clients.split(",")]:
            load_level(port, bodies, min(c, 4), min(20, args.requests), 10, args.k)  # warm-up, not reported
            r = load_level(port, bodies, c, args.requests, args.seconds, args.k)
            r["server_rss_mb"] = round(server_rss_mb(proc), 1)
            levels.append(r)
            print(json.dumps(r), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "bundle": os.path.abspath(args.bundle),
        "untrained_bundle": bool(args.make_untrained),
        "manifest": {k: bundle.manifest.get(k) for k in ("model_version", "index_factory", "gallery_size",
                                                         "embedding_dim", "input", "method", "dataset")},
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
        "workers": args.workers, "k": args.k, "server_rss_idle_mb": round(rss_idle, 1),
        "levels": levels, "ort_vs_torch": speed, "command": " ".join(sys.argv),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print("\n| clients | requests | errors | req/s | p50 ms | p99 ms | server RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in levels:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['server_rss_mb']} |")
    s = speed
    print(f"\nORT {s['onnxruntime']['images_per_s']} img/s vs PyTorch eager {s['pytorch_eager']['images_per_s']} img/s "
          f"(batch {s['batch']}, {s['input']}): ratio {s['ratio_ort_over_torch']}x, max |diff| {s['max_abs_diff']:.2g}")
    return 1 if any(r["errors"] for r in levels) else 0


if __name__ == "__main__":
    sys.exit(main())
