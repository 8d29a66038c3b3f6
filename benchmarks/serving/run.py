"""Serving benchmark: every process model `deepmetric serve` offers, with dynamic batching on and off, under 1 / 8 /
32 keep-alive clients, against the same work done offline in this process (the batch-1 loop and batch-32).

    .venv/bin/python benchmarks/serving/run.py --bundle data/09_deploy/bundle --data-root data/01_raw/glyphs

Offline, per image: decode + evaluation transform (`load_eval_image`), onnxruntime, faiss search (k), and the
neighbour list; "batch 1" does one image per call, "batch 32" 32 per call. Served: `POST /v1/search?k=10`, one
image per request, from asyncio clients on persistent (keep-alive) connections on 127.0.0.1, each level bounded
by ``--requests`` and ``--seconds`` after an unreported warm-up. A request counts as OK only with status 200 and k
neighbours; the run exits non-zero if any failed. Ratios are served req/s over the offline images/s measured in
the same run (before and after the servers, averaged). The load generator shares the machine's cores with the
server, as it does on a one-box deployment. Without a bundle, ``--make-untrained DIR`` builds one from an
untrained ResNet-18 at the project's `model` params (the same compute as a trained one; say so when quoting).
With ``--model model.pt`` it also compares onnxruntime with PyTorch eager on one batch (interleaved runs).
Prints markdown tables and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

#: The process models `deepmetric serve` offers, each with batching off and on: (name, serve arguments).
CONFIGS = [
    ("1 worker, ORT default threads, batching off", ["--workers", "1", "--threads", "0", "--no-batching"]),
    ("1 worker, ORT default threads, batching on", ["--workers", "1", "--threads", "0", "--batching"]),
    ("1 worker, 1 ORT thread, batching off", ["--workers", "1", "--threads", "1", "--no-batching"]),
    ("1 worker, 1 ORT thread, batching on (default)", ["--workers", "1", "--threads", "1", "--batching"]),
    ("2 workers, 1 ORT thread each, batching off", ["--workers", "2", "--threads", "1", "--no-batching"]),
    ("2 workers, 1 ORT thread each, batching on", ["--workers", "2", "--threads", "1", "--batching"]),
]


#: Offline loops: (onnxruntime intra-op threads (0: its default), images per call).
OFFLINE = {
    "offline batch 1, ORT default threads": (0, 1),
    "offline batch 1, 1 ORT thread": (1, 1),
    "offline batch 32, ORT default threads": (0, 32),
    "offline batch 32, 1 ORT thread": (1, 32),
}


def _get(port: int, path: str) -> bytes:
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    return c.getresponse().read()


def _batch_stats(port: int) -> dict | None:
    return json.loads(_get(port, "/healthz")).get("batches")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def raw_request(path: str, body: bytes, ctype: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def query_images(bundle, data_root: str | None, n: int) -> list[tuple[str, bytes]]:
    """Real gallery files when the dataset is at hand, else generated PNGs of the bundle's input size."""
    if data_root and Path(data_root).is_dir():
        paths = list(bundle.ids["path"])
        step = max(1, len(paths) // n)
        return [(p, (Path(data_root) / p).read_bytes()) for p in paths[::step][:n]]
    from tests.deploy_fixtures import draw_image, png_bytes

    size = (bundle.spec.resize, bundle.spec.resize)
    return [(f"gen{i}.png", png_bytes(draw_image(i % 8, i, size))) for i in range(n)]


# --- offline: the same work without HTTP -------------------------------------------------------------------------
def offline(bundle, images: list[bytes], k: int, batch: int, seconds: float) -> dict:
    from deepmetric.data.transforms import load_eval_image

    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or done < batch:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            x = np.stack([load_eval_image(d, bundle.spec) for d in chunk])
            emb = bundle.embed(x)
            scores, rows = bundle.index.search(emb, k)
            hits = bundle.neighbours(scores, rows)
            assert len(hits) == len(chunk) and len(hits[0]) == k
            done += len(chunk)
    wall = time.perf_counter() - t0
    return {"batch": batch, "images": done, "seconds": round(wall, 2), "images_per_s": round(done / wall, 1)}


# --- served: asyncio keep-alive clients ----------------------------------------------------------------------------
async def _level(port: int, requests: list[bytes], clients: int, total: int, seconds: float, k: int,
                 raw: bool = False) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    issued = 0
    stop_at = time.monotonic() + seconds
    want = b'"score"'

    async def client(cid: int) -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop_at and issued < total:
                req = requests[issued % len(requests)]
                issued += 1
                t0 = time.perf_counter()
                try:
                    writer.write(req)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    m = re.search(rb"(?i)content-length: *(\d+)", head)
                    body = await reader.readexactly(int(m.group(1))) if m else b""
                    dt = time.perf_counter() - t0
                    if status == 200 and body.count(want) == k:
                        lat.append(dt)
                    else:
                        errors.append(f"{status} {body[:120]!r}")
                except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    if raw:
        return {"lat": lat, "errors": errors, "seconds": wall, "load": os.getloadavg()[0]}
    ms = np.array(lat) * 1000 if lat else np.array([np.nan])
    return {"clients": clients, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
            "error_examples": errors[:3], "seconds": round(wall, 2), "rps": round(len(lat) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def level(port, requests, clients, total, seconds, k, raw: bool = False) -> dict:
    return asyncio.run(_level(port, requests, clients, total, seconds, k, raw))


def start_server(bundle_dir: str, extra: list[str]) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "deepmetric.cli", "serve", "--bundle", bundle_dir,
                             "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    port = None
    while time.monotonic() < deadline and port is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
    if port is None:
        proc.kill()
        raise SystemExit("server did not report its port")
    import http.client

    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("server not healthy after 180 s")


def server_rss_mb(proc: subprocess.Popen) -> float:
    import psutil

    p = psutil.Process(proc.pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)] if q.is_running()) / 2**20


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


def make_untrained(dest: Path) -> Path:
    """A bundle from an untrained ResNet-18 at the project's `model` params over 512 generated images."""
    import torch
    import yaml

    from deepmetric.export.onnx_export import export_onnx
    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.model_io import build_method, load_model, make_payload
    from tests.deploy_fixtures import make_bundle, make_dataset

    params = yaml.safe_load((PROJECT / "conf/base/parameters_train.yml").read_text())
    torch.manual_seed(0)
    cfg, mp = parse_train({**params["train"], "backbone": {**params["train"]["backbone"], "pretrained": False,
                                                           "weights_path": None}})
    method = build_method(cfg, mp, num_classes=100).eval()
    spec = InputConfig(**params["model"])
    method, spec = load_model(make_payload(method, cfg, spec, num_classes=100))
    root = dest.parent / (dest.name + "_images")
    manifest = make_dataset(root, num_classes=64, per_class=8, train_classes=0)
    make_bundle(dest, root, manifest, export_onnx(method, spec, exporter="dynamo"), metrics={"note_untrained": 1.0})
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="data/09_deploy/bundle")
    ap.add_argument("--data-root", default=None, help="dataset root: query with real gallery files")
    ap.add_argument("--make-untrained", default=None, metavar="DIR", help="build an untrained bundle here first")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--configs", default=",".join(str(i) for i in range(len(CONFIGS))),
                    help="indices into CONFIGS: " + "; ".join(f"{i}: {n}" for i, (n, _) in enumerate(CONFIGS)))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per client level")
    ap.add_argument("--burst", type=float, default=5.0, help="seconds per server (or offline loop) per round")
    ap.add_argument("--max-requests", type=int, default=2000, help="requests per burst (bound)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="order of the servers within a round")
    ap.add_argument("--model", default=None, help="model.pt: also compare onnxruntime with PyTorch eager on it")
    ap.add_argument("--batch", type=int, default=32, help="ORT vs PyTorch batch size")
    ap.add_argument("--reps", type=int, default=10, help="ORT vs PyTorch repetitions (interleaved)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()

    from deepmetric.bundle import load_bundle

    if args.make_untrained:
        args.bundle = str(make_untrained(Path(args.make_untrained)))
    bundle = load_bundle(args.bundle)
    imgs = query_images(bundle, args.data_root, 64)
    requests = [raw_request(f"/v1/search?k={args.k}", *multipart(n, d)) for n, d in imgs]
    datas = [d for _, d in imgs]
    chosen = [CONFIGS[int(v)] for v in args.configs.split(",")]
    offline_bundles = {0: bundle, 1: load_bundle(args.bundle, threads=1)}
    rng = np.random.default_rng(args.seed)
    load_start = os.getloadavg()
    speed = None
    if args.model and Path(args.model).is_file():
        import torch

        from deepmetric.data.transforms import load_eval_image

        payload = torch.load(args.model, map_location="cpu", weights_only=False)
        batch = np.stack([load_eval_image(d, bundle.spec) for d in (datas * 4)[: args.batch]])
        speed = ort_vs_torch(bundle, payload, batch, args.reps)
        print(json.dumps({"ort_vs_torch": speed}), flush=True)

    servers = {}
    try:
        for name, extra in chosen:  # all up at once, idle while another one is measured
            servers[name] = start_server(args.bundle, extra)
            level(servers[name][1], requests, 8, 40, 30, args.k)  # warm-up, not reported
        rss_idle = {name: round(server_rss_mb(proc), 1) for name, (proc, _) in servers.items()}
        table: dict[str, list[dict]] = {name: [] for name in servers}
        offline_rows: list[dict] = []
        for clients in [int(v) for v in args.clients.split(",")]:
            acc = {name: {"lat": [], "ok": 0, "errors": [], "wall": 0.0, "load": [],
                          "stats_before": _batch_stats(servers[name][1])} for name in servers}
            off = {key: [0, 0.0] for key in OFFLINE}
            for rnd in range(args.rounds):
                order = list(servers) + list(OFFLINE)
                rng.shuffle(order)
                for name in order:
                    if name in OFFLINE:
                        threads, batch = OFFLINE[name]
                        r = offline(offline_bundles[threads], datas, args.k, batch, args.burst)
                        off[name][0] += r["images"]
                        off[name][1] += r["seconds"]
                        continue
                    r = level(servers[name][1], requests, clients, args.max_requests, args.burst, args.k, raw=True)
                    a = acc[name]
                    a["lat"] += r["lat"]
                    a["ok"] += len(r["lat"])
                    a["errors"] += r["errors"]
                    a["wall"] += r["seconds"]
                    a["load"].append(r["load"])
            rates = {name: off[name][0] / off[name][1] for name in OFFLINE}
            # The peers: the faster of the two thread settings (the conservative ratio).
            b1 = max(rates["offline batch 1, ORT default threads"], rates["offline batch 1, 1 ORT thread"])
            b32 = max(rates["offline batch 32, ORT default threads"], rates["offline batch 32, 1 ORT thread"])
            offline_rows.append({"clients_level": clients, **{n: round(v, 1) for n, v in rates.items()},
                                 "batch_1_peer_images_per_s": round(b1, 1), "batch_32_peer_images_per_s": round(b32, 1)})
            for name in servers:  # images per onnxruntime batch in this level (one-process servers only)
                after = _batch_stats(servers[name][1])
                before = acc[name]["stats_before"]
                if after and before and "--workers" in dict(chosen)[name] and dict(chosen)[name][1] == "1":
                    n = after["count"] - before["count"]
                    acc[name]["mean_batch"] = round((after["images"] - before["images"]) / n, 2) if n else None
            for name, a in acc.items():
                ms = np.array(a["lat"]) * 1000 if a["lat"] else np.array([np.nan])
                rps = a["ok"] / a["wall"]
                p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
                row = {"clients": clients, "requests": a["ok"] + len(a["errors"]), "ok": a["ok"],
                       "errors": len(a["errors"]), "error_examples": a["errors"][:3], "seconds": round(a["wall"], 1),
                       "rps": round(rps, 1), "p50_ms": round(p50, 1), "p99_ms": round(p99, 1),
                       "p99_over_p50": round(p99 / p50, 2), "vs_offline_batch1": round(rps / b1, 2),
                       "vs_offline_batch32": round(rps / b32, 2),
                       "load_avg_1min": [round(min(a["load"]), 1), round(max(a["load"]), 1)],
                       "mean_batch_images_one_worker": a.get("mean_batch"),
                       "server_rss_mb": round(server_rss_mb(servers[name][0]), 1)}
                table[name].append(row)
                print(json.dumps({"config": name, **row}), flush=True)
            print(json.dumps({"offline": offline_rows[-1]}), flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=60)

    results = [{"config": name, "serve_args": dict(chosen)[name], "server_rss_idle_mb": rss_idle[name],
                "levels": table[name]} for name in servers]
    out = {
        "bundle": os.path.abspath(args.bundle), "untrained_bundle": bool(args.make_untrained),
        "manifest": {key: bundle.manifest.get(key) for key in ("model_version", "index_factory", "gallery_size",
                                                               "embedding_dim", "input", "method", "dataset")},
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_avg_at_start": load_start,
                    "load_avg_at_end": os.getloadavg()},
        "k": args.k, "rounds": args.rounds, "burst_seconds": args.burst, "offline": offline_rows,
        "results": results, "ort_vs_torch": speed, "command": " ".join(sys.argv),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print("\n| clients level | " + " | ".join(f"{n} img/s" for n in OFFLINE) + " |")
    print("|---:|" + "---:|" * len(OFFLINE))
    for r in offline_rows:
        print(f"| {r['clients_level']} | " + " | ".join(str(r[n]) for n in OFFLINE) + " |")
    print("\n| process model | clients | requests | errors | req/s | × offline b1 | × offline b32 | p50 ms | p99 ms | "
          "p99/p50 | mean batch | server RSS MB | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for clients_i in range(len(offline_rows)):
        for res in results:
            r = res["levels"][clients_i]
            print(f"| {res['config']} | {r['clients']} | {r['requests']} | {r['errors']} | {r['rps']} | "
                  f"{r['vs_offline_batch1']} | {r['vs_offline_batch32']} | {r['p50_ms']} | {r['p99_ms']} | "
                  f"{r['p99_over_p50']} | {r['mean_batch_images_one_worker'] or '–'} | {r['server_rss_mb']} | "
                  f"{r['load_avg_1min'][0]}–{r['load_avg_1min'][1]} |")
    return 1 if any(r["errors"] for res in results for r in res["levels"]) else 0


if __name__ == "__main__":
    sys.exit(main())
