"""What loading a bundle's index costs at 10^6 vectors: the way `load_bundle` read it before issue 22 (the whole
file into memory, sha256 of those bytes, `faiss.deserialize_index` of a copy) against the way it reads it now
(sha256 streamed in 1 MiB blocks, `faiss.read_index(path, IO_FLAG_MMAP_IFC)`), and a reload of the unchanged file
(the checksum remembered: `deepmetric.bundle.reader.verify_file`), each in its own process for a clean peak RSS.

    .venv/bin/python benchmarks/index/load.py                 # 10^6 × 128-d Flat and HNSW32 (README.md)
    .venv/bin/python benchmarks/index/load.py --n 100000      # smaller

These are the index file's part of `load_bundle` (at 10^6 it is 512 MB of the bundle's bytes; the model and the id
table are read as before). Figures: wall time of the load (page cache warm: the file was just hashed, as on a
reload), peak RSS above the interpreter's, and anonymous memory after the load (what was copied, not mapped).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))

from run import THREAD_ENV, centres, generate, mem  # noqa: E402

MODES = ("before", "mapped", "reload")


def stage(mode: str, path: str) -> dict:
    """One load of ``path`` in this process: ``before`` (read + hash + deserialize), ``mapped`` (streamed hash +
    mmap), ``reload`` (a first verify remembered, then the timed second verify + mmap)."""
    import faiss  # noqa: F401  (imported before the baseline: its own memory is not the load's)

    from deepmetric.bundle.reader import verify_file
    from deepmetric.index.build import deserialize_index, read_index_file

    p = Path(path)
    want = json.loads(p.with_suffix(".json").read_text())["sha256"]
    if mode == "reload":
        verify_file(p.parent, p.name, want)
    base = mem()
    t0 = time.perf_counter()
    if mode == "before":
        data = p.read_bytes()
        assert hashlib.sha256(data).hexdigest() == want
        index = deserialize_index(data)
        del data
        hashed = True
    else:
        hashed = verify_file(p.parent, p.name, want)
        index = read_index_file(str(p), mmap=True)
    wall = time.perf_counter() - t0
    after = mem()
    _, found = index.search(np.load(p.with_suffix(".probe.npy")), 10)
    return {"mode": mode, "load_wall_s": round(wall, 3), "hashed": hashed,
            "peak_rss_above_start": after["VmHWM"] - base["VmRSS"],
            "anon_after_load": after["RssAnon"] - base["RssAnon"],
            "found": found[:, 0].tolist()}


def build(path: Path, factory: str, n: int, dim: int) -> None:
    import faiss

    c, spread, _ = centres(n, dim, 0)
    x, _ = generate(c, spread, n, np.random.default_rng([0, dim, n, 1]))
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    index.add(x)
    faiss.write_index(index, str(path))
    np.save(path.with_suffix(".probe.npy"), x[:10])
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    path.with_suffix(".json").write_text(json.dumps({"sha256": h.hexdigest()}))
    os.utime(path, (time.time() - 60, time.time() - 60))  # as a bundle sits on a host (not racily fresh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10 ** 6)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--factories", nargs="+", default=["Flat", "HNSW32"])
    ap.add_argument("--rounds", type=int, default=3, help="processes per mode (the median is reported)")
    ap.add_argument("--out", default=str(HERE / "load_results.json"))
    ap.add_argument("--stage", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage:
        print(json.dumps(stage(*a.stage)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="deepmetric-load-bench-") as tmp:
        for factory in a.factories:
            path = Path(tmp) / f"{factory}.faiss"
            t0 = time.perf_counter()
            build(path, factory, a.n, a.dim)
            print(f"{factory}: built in {time.perf_counter() - t0:.0f} s, {path.stat().st_size / 1e6:.0f} MB",
                  file=sys.stderr, flush=True)
            for mode in MODES:
                runs = []
                for _ in range(a.rounds):
                    p = subprocess.run([sys.executable, __file__, "--stage", mode, str(path)], capture_output=True,
                                       text=True, env={**os.environ, **THREAD_ENV}, check=True)
                    runs.append(json.loads(p.stdout))
                assert all(r["found"] == list(range(10)) for r in runs), f"{factory} {mode}: wrong neighbours"
                med = sorted(runs, key=lambda r: r["load_wall_s"])[len(runs) // 2]
                rows.append({"factory": factory, "n": a.n, "dim": a.dim, "index_bytes": path.stat().st_size,
                             **{k: med[k] for k in med if k != "found"},
                             "load_wall_s_all": [r["load_wall_s"] for r in runs]})
                print(f"  {mode}: {rows[-1]['load_wall_s']} s, peak +{rows[-1]['peak_rss_above_start'] / 1e6:.0f} MB,"
                      f" anon +{rows[-1]['anon_after_load'] / 1e6:.0f} MB", file=sys.stderr, flush=True)
    Path(a.out).write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
