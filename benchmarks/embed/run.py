"""`deepmetric embed` throughput against an offline onnxruntime loop over the same files, in one run.

    nice -n 10 .venv/bin/python benchmarks/embed/run.py [--bundle DIR | --make-untrained DIR] [--images 8000]
        [--scaling-only [--control]]

Generates (once) ``--images`` distinct JPEGs (160x120, in 50 class folders) under ``--workdir``. The peer is the
plainest offline loop over the same files in this process: ``load_eval_image`` (decode + the evaluation transform)
per file, ``InferenceSession.run`` per batch of 32, onnxruntime at its default threads (every core), the embeddings
kept in memory. Against it, `deepmetric embed --bundle B <folder> --out X.parquet` as a user runs it (a process of
its own: start-up, bundle verification, listing, the Parquet output included) with 1 process (onnxruntime on every
core, and on 1 thread) and with 2 processes (1 thread each). The configurations run in rounds, each round in a
shuffled order, so a change of machine load falls on all of them; each figure is the median of its rounds. The CPU
seconds of each run (this process for the loop; the command and its worker processes for embed) are recorded too:
on a machine other work shares, CPU work per image shows what parallelism costs when wall time cannot.
``--control`` measures the same for the offline loop itself (1 process vs 2 processes each on half the files, 1
onnxruntime thread each): what the machine lets any 2-process split keep, the bound for `embed`'s.
Without a bundle, ``--make-untrained DIR`` builds one as benchmarks/serving does (an untrained ResNet-18 at the
project's `model` params: the compute of a trained one). Prints and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))

#: `deepmetric embed` configurations: name → extra flags.
CONFIGS = {
    "embed, 1 process (ORT all cores)": ["--processes", "1", "--threads", "0"],
    "embed, 1 process, 1 ORT thread": ["--processes", "1", "--threads", "1"],
    "embed, 2 processes, 1 ORT thread each": ["--processes", "2", "--threads", "1"],
}
PEER = "offline loop (ORT all cores)"


def generate(folder: Path, n: int, classes: int = 50) -> None:
    if (folder / ".complete").is_file():
        return
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(120, 160, 3), dtype=np.int64)
    for i in range(n):
        arr = np.clip(base + rng.integers(-60, 60, size=base.shape), 0, 255).astype(np.uint8)
        dest = folder / f"class-{i % classes:02d}" / f"{i:06d}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(dest, "JPEG", quality=90)
    (folder / ".complete").write_text("")


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def offline_loop(bundle_dir: str, folder: Path, batch: int = 32, threads: int = 0, part: tuple[int, int] = (0, 1)
                 ) -> tuple[float, float, np.ndarray]:
    """(seconds, CPU seconds, embeddings) of the plain loop over every image file of ``folder``, sorted by path
    (``part`` (i, n): only every n-th file from the i-th); ``threads``: onnxruntime's intra-op threads (0: all)."""
    import onnxruntime as ort

    from deepmetric.bundle import load_bundle
    from deepmetric.data.transforms import load_eval_image

    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    spec = load_bundle(bundle_dir).spec
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(Path(bundle_dir) / "model.onnx"), sess_options=opts,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    files = sorted(p for p in folder.rglob("*.jpg"))[part[0]::part[1]]
    out = []
    global LOOP_CPU_S
    c1 = _cpu(resource.RUSAGE_SELF)
    for start in range(0, len(files), batch):
        x = np.stack([load_eval_image(f, spec) for f in files[start:start + batch]])
        out.append(session.run(None, {name: x})[0])
    LOOP_CPU_S = _cpu(resource.RUSAGE_SELF) - c1  # the loop alone, without loading the model
    return time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0, np.concatenate(out)


LOOP_CPU_S = 0.0


def run_embed(bundle_dir: str, folder: Path, out: Path, flags: list[str]) -> tuple[float, float]:
    """(seconds, CPU seconds of the command and its worker processes) of one `deepmetric embed`."""
    for p in (out, out.with_name(out.name + ".partial")):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    t0, c0 = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "deepmetric.cli", "embed", "--bundle", bundle_dir, str(folder),
                           "--out", str(out), "--no-progress", *flags], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"deepmetric embed failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, _cpu(resource.RUSAGE_CHILDREN) - c0


def control(bundle_dir: str, folder: Path) -> dict[str, float]:
    """The machine's own 2-process efficiency, without deepmetric's command: the offline loop at 1 onnxruntime
    thread over every file in one process, then over half the files in each of two processes started together.
    Images per CPU second of the two against the one: what any 2-process split of this work keeps here."""
    def loop(part: tuple[int, int]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--loop-part", f"{part[0]}/{part[1]}", "--bundle",
                                 bundle_dir, "--workdir", str(folder.parent)], stdout=subprocess.PIPE, text=True)

    def cpu_of(procs: list[subprocess.Popen]) -> tuple[float, float]:
        t0 = time.perf_counter()
        outs = [json.loads(p.communicate()[0]) for p in procs]
        return time.perf_counter() - t0, sum(o["loop_cpu_s"] for o in outs)

    one_s, one_cpu = cpu_of([loop((0, 1))])
    two_s, two_cpu = cpu_of([loop((0, 2)), loop((1, 2))])
    # CPU seconds of the loops alone (decode, transform, inference), not the interpreter or model start-up
    return {"one_process_s": round(one_s, 2), "one_process_loop_cpu_s": round(one_cpu, 2),
            "two_processes_s": round(two_s, 2), "two_processes_loop_cpu_s": round(two_cpu, 2),
            "cpu_efficiency_2_processes_vs_1": round(one_cpu / two_cpu, 3)}


def make_untrained(dest: Path) -> Path:
    spec = importlib.util.spec_from_file_location("serving_bench", PROJECT / "benchmarks" / "serving" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_untrained(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="data/09_deploy/bundle")
    ap.add_argument("--make-untrained", default=None, metavar="DIR", help="build an untrained bundle here first")
    ap.add_argument("--images", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/deepmetric-bench-embed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scaling-only", action="store_true",
                    help="only 1 process vs 2 processes at 1 ORT thread each (no offline loop)")
    ap.add_argument("--control", action="store_true",
                    help="with --scaling-only: also the offline loop in 1 process vs 2 (the machine's own efficiency)")
    ap.add_argument("--loop-part", default=None, help=argparse.SUPPRESS)  # i/n: one process of --control
    ap.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    args = ap.parse_args()
    work = Path(args.workdir)
    if args.loop_part:
        i, n = map(int, args.loop_part.split("/"))
        s, c, _ = offline_loop(args.bundle, work / "photos", threads=1, part=(i, n))
        print(json.dumps({"seconds": s, "cpu_s": c, "loop_cpu_s": LOOP_CPU_S}))
        return
    if args.make_untrained:
        dest = Path(args.make_untrained)
        args.bundle = str(dest if (dest / "manifest.json").is_file() else make_untrained(dest))
    folder = work / "photos"
    generate(folder, args.images)
    from deepmetric.index.bulk import embedding_matrix, read_embeddings

    rng = np.random.default_rng(args.seed)
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    names = ["embed, 1 process, 1 ORT thread", "embed, 2 processes, 1 ORT thread each"] if args.scaling_only \
        else [PEER, *CONFIGS]
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in seconds}
    max_diff, ref = 0.0, None
    for _ in range(args.rounds):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            if name == PEER:
                s, c, ref = offline_loop(args.bundle, folder)
            else:
                out = work / "out.parquet"
                s, c = run_embed(args.bundle, folder, out, CONFIGS[name])
                got = embedding_matrix(read_embeddings(out))
                if ref is not None:  # the same embeddings as the peer's, file for file
                    max_diff = max(max_diff, float(np.abs(got - ref).max()))
            seconds[name].append(s)
            cpu[name].append(c)
            print(f"{name}: {s:.1f} s, {c:.1f} CPU s", file=sys.stderr, flush=True)
    rows = {name: {"seconds": [round(s, 2) for s in v], "median_s": round(statistics.median(v), 2),
                   "images_per_s": round(args.images / statistics.median(v), 1),
                   "cpu_seconds": [round(c, 2) for c in cpu[name]],
                   "images_per_cpu_s": round(args.images / statistics.median(cpu[name]), 1)}
            for name, v in seconds.items()}
    ips = {name: r["images_per_s"] for name, r in rows.items()}
    result = {
        "images": args.images,
        "bundle": Path(args.bundle).name,  # the folder name only: no path of the machine it ran on
        "rounds": args.rounds,
        "results": rows,
        "embed_1_process_vs_offline": round(ips["embed, 1 process (ORT all cores)"] / ips[PEER], 3) if PEER in ips
        else None,
        "embed_2_processes_vs_offline": round(ips["embed, 2 processes, 1 ORT thread each"] / ips[PEER], 3)
        if PEER in ips else None,
        "embed_2_processes_vs_1_process_1_thread": round(
            ips["embed, 2 processes, 1 ORT thread each"] / ips["embed, 1 process, 1 ORT thread"], 3),
        # CPU work per image of 2 processes against 1 (1.0: parallelism costs nothing; on 2 free cores the wall-time
        # speed-up is then 2 x this)
        "cpu_efficiency_2_processes_vs_1": round(
            rows["embed, 2 processes, 1 ORT thread each"]["images_per_cpu_s"]
            / rows["embed, 1 process, 1 ORT thread"]["images_per_cpu_s"], 3),
        "max_abs_difference_vs_offline": max_diff if ref is not None else None,
        "control_offline_loop_2_processes_vs_1": control(args.bundle, folder) if args.control else None,
        "cpus": os.cpu_count(),
        "load_average_before_after": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "niceness": os.nice(0),
        "python": platform.python_version(),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M"),
    }
    text = json.dumps(result, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
