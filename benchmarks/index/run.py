"""Cost curves of faiss indexes over DML-like embeddings: build time, peak RSS, size, recall@10 vs exact,
queries/s at batch 1 and 32, load time (read and memory-mapped), for every kind of `deepmetric.index.auto.KINDS`,
gallery sizes 10^4 → 10^7 and 128-d / 512-d, and the slope per decade of each cost.

    .venv/bin/python benchmarks/index/run.py                      # the full run (hours; README.md)
    .venv/bin/python benchmarks/index/run.py --quick --out q.json # 10^4 × 128-d only, seconds

Vectors: a two-level Gaussian mixture on the unit sphere (``n / 1000`` categories of 100 classes of 10 vectors
on average, anisotropic; see `centres`), queries fresh draws of the same classes, ground truth by exact inner
product over the gallery in chunks. Each configuration runs in its own processes (build; load + search; each
memory-mapped load) so each peak RSS is its own; every process runs faiss on one thread. The IVF kinds without
a rotation share one coarse quantizer and its assignment of the gallery per (n, dim), computed once and counted
in each one's build time. Sizes from ``--nice-from`` up run under ``nice -n 10``. A size whose float32 gallery
exceeds ``--max-data-gb``, or a kind whose peak RSS or build time extrapolated from the smaller sizes of this run
exceeds ``--max-rss-gb`` / ``--max-build-cpu-s``, is skipped with that estimate as the reason. Results are saved
after every configuration; ``--resume`` continues an interrupted run from ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "src"))

from deepmetric.index.auto import (  # noqa: E402
    HNSW_M,
    KINDS,
    RECALL_TARGET,
    Measured,
    best_index,
    ivf_nlist,
)

K = 10
CHUNK = 65_536
SHARED_COARSE = ("ivf_flat", "ivf_sq8", "ivf_pq")
"""IVF kinds whose coarse quantizer is k-means in the input space: trained once per (n, dim) and shared."""
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "OMP_WAIT_POLICY": "PASSIVE", "PYTHONDONTWRITEBYTECODE": "1"}


# ---------------------------------------------------------------------------------------------------- data
CLASS_SIZE = 10
"""Gallery vectors per class on average (classes drawn uniformly: Poisson sizes)."""
GROUP_SIZE = 100
"""Classes per category: trained embeddings place similar classes (kinds of product, of bird) near each other."""
CLASS_TO_GROUP = 1.0
"""Spread of class centres around their category's centre (cosine ≈ 0.7 between the two)."""


def spectrum(dim: int) -> np.ndarray:
    """Per-dimension scale ∝ (1 + i)^-1/2: the variance of trained embeddings is spread unevenly (a participation
    ratio of ≈ 25 of 128 and ≈ 40 of 512 dimensions), not isotropic."""
    s = (1.0 + np.arange(dim)) ** -0.5
    return (s / np.sqrt((s ** 2).sum())).astype(np.float32)


def _rng(seed: int, dim: int, n: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, dim, n, *stream])


def _directions(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    e = rng.standard_normal((rows, dim), dtype=np.float32) * spectrum(dim)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def centres(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A two-level mixture: ``n / 1000`` category centres, ``n / 10`` class centres around them (cosine ≈ 0.7 to
    their category's), each class's spread (0.5–1.0: member-to-centre cosine 0.89–0.71) and category."""
    classes = max(n // CLASS_SIZE, 1)
    r = _rng(seed, dim, n, 0)
    groups = _directions(r, max(classes // GROUP_SIZE, 1), dim)
    group = r.integers(0, len(groups), classes)
    c = groups[group] + CLASS_TO_GROUP * _directions(r, classes, dim)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c, r.uniform(0.5, 1.0, classes).astype(np.float32), group


def generate(c: np.ndarray, spread: np.ndarray, rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` L2-normalised members of uniformly drawn classes: centre + spread · a random direction shaped by
    the same spectrum."""
    labels = rng.integers(0, len(c), rows)
    x = c[labels] + spread[labels, None] * _directions(rng, rows, c.shape[1])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def stage_data(a: dict) -> dict:
    """Gallery (``gallery.f32``, raw float32 rows), labels, queries and their exact top-``K`` (ids)."""
    import faiss

    n, dim, d = a["n"], a["dim"], Path(a["dir"])
    c, spread, group = centres(n, dim, a["seed"])
    queries, qlabels = generate(c, spread, a["queries"], _rng(a["seed"], dim, n, 2))
    heap = faiss.ResultHeap(len(queries), K, keep_max=True)
    labels = np.empty(n, dtype=np.int32)
    gen_s = gt_s = 0.0
    with open(d / "gallery.f32", "wb") as f:
        for j, start in enumerate(range(0, n, CHUNK)):
            t0 = time.process_time()
            x, lab = generate(c, spread, min(CHUNK, n - start), _rng(a["seed"], dim, n, 1, j))
            t1 = time.process_time()
            scores = queries @ x.T
            top = (np.argpartition(-scores, K, axis=1)[:, :K] if len(x) > K
                   else np.broadcast_to(np.arange(len(x)), scores.shape))
            heap.add_result(np.take_along_axis(scores, top, 1), top + start)
            gt_s += time.process_time() - t1
            gen_s += t1 - t0
            labels[start:start + len(lab)] = lab
            f.write(x.tobytes())
    heap.finalize()
    np.save(d / "labels.npy", labels)
    np.save(d / "queries.npy", queries)
    np.save(d / "gt.npy", heap.I)
    top1 = heap.I[:, 0]
    sample = np.fromfile(d / "gallery.f32", dtype=np.float32, count=min(n, 20_000) * dim).reshape(-1, dim)
    ev = np.linalg.eigvalsh(np.cov(sample.T.astype(np.float64)))
    ev = np.clip(ev, 0, None) / ev.sum()
    same = qlabels[:, None] == labels[heap.I]
    return {
        "generate_cpu_s": round(gen_s, 2), "ground_truth_cpu_s": round(gt_s, 2), "classes": len(c),
        "stats": {
            "query_top1_same_class": round(float((labels[top1] == qlabels).mean()), 4),
            "query_top10_same_class": round(float(same.mean()), 4),
            "query_top10_same_category": round(float((group[qlabels][:, None] == group[labels[heap.I]]).mean()), 4),
            "cos_query_top1": round(float(np.mean(heap.D[:, 0])), 4),
            "cos_query_top10": round(float(np.mean(heap.D[:, -1])), 4),
            "participation_ratio": round(float(1.0 / (ev ** 2).sum()), 1),
        },
    }


def read_rows(path: Path, dim: int, start: int, rows: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``start:start+rows`` of a raw float32 file with plain reads (no mapping: they leave no RSS behind)."""
    buf = out[:rows] if out is not None else np.empty((rows, dim), dtype=np.float32)
    with open(path, "rb", buffering=0) as f:
        f.seek(start * dim * 4)
        view = memoryview(buf).cast("B")
        got = 0
        while got < len(view):
            k = f.readinto(view[got:])
            if not k:
                raise EOFError(f"{path}: {start + rows} rows expected")
            got += k
    return buf


# ---------------------------------------------------------------------------------------------------- process
def mem() -> dict[str, int]:
    """This process's memory from /proc/self/status, bytes: VmRSS, VmHWM (peak RSS), RssAnon, RssFile."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


class Clock:
    def __enter__(self) -> Clock:
        self.cpu0, self.wall0 = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self.cpu0
        self.wall = time.perf_counter() - self.wall0


def drop_cache(path: Path) -> None:
    """Evict ``path`` from the page cache (clean pages only: the file was fsync'ed), so a load reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _faiss(blas_from: int | None = None):
    """faiss on one thread. ``blas_from``: the number of queries per call from which exact distances go through
    BLAS (``distance_compute_blas_threshold``; None: faiss' default, 128,000 in 1.15, below which it scans the
    vectors query by query; 20 in older faiss)."""
    import faiss

    faiss.omp_set_num_threads(1)
    if blas_from is not None:
        faiss.cvar.distance_compute_blas_threshold = blas_from
    return faiss


# ---------------------------------------------------------------------------------------------------- build
def stage_coarse(a: dict) -> dict:
    """The shared coarse quantizer: k-means (faiss' IVF defaults: 10 iterations) on the training sample, then the
    nearest list of every gallery vector (``assign.i64``), each chunk of 65,536 in one matrix product."""
    faiss = _faiss(blas_from=20)
    n, dim, d = a["n"], a["dim"], Path(a["dir"])
    nlist = ivf_nlist(n)
    train_n = KINDS["ivf_flat"].train_size(n)
    xt = read_rows(d / "gallery.f32", dim, 0, train_n)
    with Clock() as train:
        km = faiss.Clustering(dim, nlist)
        km.seed = a["seed"]
        km.niter = 10
        quantizer = faiss.IndexFlatIP(dim)
        km.train(xt, quantizer)
    del xt
    centroids = faiss.vector_to_array(km.centroids).reshape(nlist, dim)
    np.save(d / "centroids.npy", centroids)
    buf = np.empty((CHUNK, dim), dtype=np.float32)
    with Clock() as assign, open(d / "assign.i64", "wb") as f:
        for start in range(0, n, CHUNK):
            x = read_rows(d / "gallery.f32", dim, start, min(CHUNK, n - start), buf)
            _, lists = quantizer.search(x, 1)
            f.write(lists.astype(np.int64).tobytes())
    return {"nlist": nlist, "train_points": train_n, "train_cpu_s": round(train.cpu, 3),
            "train_wall_s": round(train.wall, 3), "assign_cpu_s": round(assign.cpu, 3),
            "assign_wall_s": round(assign.wall, 3), "peak_rss": mem()["VmHWM"]}


def stage_build(a: dict) -> dict:
    """Build one index (train on the sample, add the gallery in chunks, coarse assignment by BLAS), write it."""
    faiss = _faiss(blas_from=20)
    kind, n, dim, d = KINDS[a["kind"]], a["n"], a["dim"], Path(a["dir"])
    base = mem()["VmRSS"]
    factory = kind.factory(n, dim)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if "ef_construction" in kind.build:
        faiss.downcast_index(index).hnsw.efConstruction = kind.build["ef_construction"]
    shared = a["kind"] in SHARED_COARSE
    ivf = faiss.extract_index_ivf(index) if kind.trains else None
    if "polysemous_training" in kind.build:
        faiss.downcast_index(ivf).do_polysemous_training = bool(kind.build["polysemous_training"])
    if ivf is not None:
        ivf.cp.seed = a["seed"]
        if shared:  # a trained quantizer with nlist entries: IndexIVF.train trains the encoder only
            faiss.downcast_index(ivf.quantizer).add(np.load(d / "centroids.npy"))
    with Clock() as train:
        if kind.trains:
            xt = read_rows(d / "gallery.f32", dim, 0, kind.train_size(n))
            index.train(xt)
            del xt
    buf = np.empty((CHUNK, dim), dtype=np.float32)
    with Clock() as add:
        for start in range(0, n, CHUNK):
            x = read_rows(d / "gallery.f32", dim, start, min(CHUNK, n - start), buf)
            if shared:
                lists = np.fromfile(d / "assign.i64", dtype=np.int64, count=len(x), offset=start * 8)
                ivf.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(lists))
            else:
                index.add(x)
    assert index.ntotal == n, (index.ntotal, n)
    peak = mem()["VmHWM"]
    del buf
    path = Path(a["index"])
    faiss.write_index(index, str(path))
    drop_cache(path)
    return {"factory": factory, "train_points": kind.train_size(n), "train_cpu_s": round(train.cpu, 3),
            "train_wall_s": round(train.wall, 3), "add_cpu_s": round(add.cpu, 3), "add_wall_s": round(add.wall, 3),
            "rss_baseline": base, "peak_rss": peak, "index_bytes": path.stat().st_size}


# ---------------------------------------------------------------------------------------------------- search
def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k that the index returns (order-free), over the queries."""
    return float(np.mean([len(np.intersect1d(f[f >= 0], t)) / len(t) for f, t in zip(found, truth)]))


def throughput(index, queries: np.ndarray, batch: int, min_cpu_s: float, rounds: int = 5) -> dict:
    """Queries/s at ``batch`` on one thread: ``rounds`` rounds, each cycling through the queries for
    ``min_cpu_s / rounds`` of CPU (at least one batch); the best round (the least disturbed by the machine's other
    work) and the median. Per CPU second (what one core gives) and per wall second."""
    per_round, b = [], 0
    for _ in range(rounds):
        done = 0
        with Clock() as c:
            while done == 0 or time.process_time() - c.cpu0 < min_cpu_s / rounds:
                start = (b * batch) % len(queries)
                q = queries[start:start + batch]
                index.search(q, K)
                done += len(q)
                b += 1
        per_round.append((done, done / max(c.cpu, 1e-9), done / max(c.wall, 1e-9)))
    cpu = sorted(r[1] for r in per_round)
    return {"queries": sum(r[0] for r in per_round), "qps_cpu": round(cpu[-1], 1),
            "qps_cpu_median": round(cpu[len(cpu) // 2], 1), "qps_wall": round(max(r[2] for r in per_round), 1)}


def stage_search(a: dict) -> dict:
    """Load (cold: the file evicted from the page cache), tune the search knob to the recall target, measure
    (faiss' defaults; then batch 32 again with BLAS from 20 queries, ``batch32_blas``)."""
    from deepmetric.index.build import apply_search_params

    faiss = _faiss()
    kind, d, path = KINDS[a["kind"]], Path(a["dir"]), Path(a["index"])
    queries, gt = np.load(d / "queries.npy"), np.load(d / "gt.npy")
    drop_cache(path)
    before = mem()
    with Clock() as load:
        index = faiss.read_index(str(path))
    loaded = mem()
    sweep, chosen = [], {}
    if kind.search_param is None:
        with Clock() as c:
            _, found = index.search(queries, K)
        sweep.append({"value": None, "recall@10": round(recall_at_k(found, gt), 4), "cpu_s": round(c.cpu, 3)})
    else:
        limit = ivf_nlist(a["n"]) if kind.trains else max(kind.sweep)
        for v in [v for v in kind.sweep if v <= limit]:
            apply_search_params(index, {kind.search_param: v})
            with Clock() as c:
                _, found = index.search(queries, K)
            sweep.append({"value": v, "recall@10": round(recall_at_k(found, gt), 4), "cpu_s": round(c.cpu, 3)})
            if sweep[-1]["recall@10"] >= RECALL_TARGET:
                break
            if len(sweep) >= 3 and sweep[-1]["recall@10"] - sweep[-3]["recall@10"] < 0.004:
                break  # saturated: the codes, not the knob, bound the recall
        best = next((s for s in sweep if s["recall@10"] >= RECALL_TARGET), max(sweep, key=lambda s: s["recall@10"]))
        chosen = {kind.search_param: best["value"]}
        apply_search_params(index, chosen)
        _, found = index.search(queries, K)
    np.save(d / f"found_{a['kind']}.npy", found)
    batch1 = throughput(index, queries, 1, a["min_cpu_s"])
    batch32 = throughput(index, queries, 32, a["min_cpu_s"])
    _faiss(blas_from=20)
    batch32_blas = throughput(index, queries, 32, a["min_cpu_s"])
    return {
        "load_cpu_s": round(load.cpu, 4), "load_wall_s": round(load.wall, 4),
        "rss_after_load": loaded["VmRSS"], "anon_after_load": loaded["RssAnon"] - before["RssAnon"],
        "search": chosen, "sweep": sweep, "recall@10": round(recall_at_k(found, gt), 4),
        "batch1": batch1, "batch32": batch32, "batch32_blas": batch32_blas,
        "peak_rss": mem()["VmHWM"],
    }


def stage_mmap(a: dict) -> dict:
    """``faiss.read_index(path, flag)`` for one mmap flag, cold: load time, anonymous memory after the load (what
    was copied in, not mapped), whether the results equal the plain load's, and the file pages a search touched."""
    from deepmetric.index.build import apply_search_params

    faiss = _faiss()
    d, path = Path(a["dir"]), Path(a["index"])
    queries = np.load(d / "queries.npy")
    drop_cache(path)
    before = mem()
    try:
        with Clock() as load:
            index = faiss.read_index(str(path), getattr(faiss, a["flag"]))
    except RuntimeError as e:
        return {"error": str(e).strip().splitlines()[-1][:200]}
    loaded = mem()
    apply_search_params(index, a["search"])
    with Clock() as c:
        _, found = index.search(queries, K)
    searched = mem()
    anon = loaded["RssAnon"] - before["RssAnon"]
    size = path.stat().st_size
    return {"load_wall_s": round(load.wall, 4), "load_cpu_s": round(load.cpu, 4), "anon_after_load": anon,
            "file_rss_after_search": searched["RssFile"] - before["RssFile"],
            "anon_fraction": round(anon / size, 3), "mapped": anon < 0.5 * size, "same_results": bool(np.array_equal(found, np.load(d / f"found_{a['kind']}.npy"))),
            "search_cold_cpu_s": round(c.cpu, 3), "search_cold_wall_s": round(c.wall, 3)}


STAGES = {"data": stage_data, "coarse": stage_coarse, "build": stage_build, "search": stage_search,
          "mmap": stage_mmap}
MMAP_FLAGS = ("IO_FLAG_MMAP", "IO_FLAG_MMAP_IFC")


# ---------------------------------------------------------------------------------------------------- driver
class StageError(RuntimeError):
    pass


def run_stage(stage: str, args: dict, nice: bool, timeout: float | None = None) -> dict:
    """One stage in its own Python process (one faiss thread); its JSON answer, or StageError with its stderr."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        cmd = [sys.executable, __file__, "--stage", stage, "--stage-args", json.dumps(args), "--stage-out", out.name]
        if nice:
            cmd = ["nice", "-n", "10", *cmd]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env={**os.environ, **THREAD_ENV}, capture_output=True, text=True, timeout=timeout)
        if p.returncode:
            raise StageError(f"stage {stage} exited {p.returncode}: {p.stderr.strip()[-800:]}")
        result = json.loads(Path(out.name).read_text())
    result["stage_wall_s"] = round(time.perf_counter() - t0, 2)
    result["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return result


def estimated_bytes_per_vector(kind: str, dim: int) -> float:
    """Memory per gallery vector before anything is measured (a floor: faiss adds its overheads)."""
    return {"flat": 4 * dim, "hnsw": 4 * dim + 2 * HNSW_M * 4 * 1.1, "ivf_flat": 4 * dim + 8,
            "ivf_sq8": dim + 8, "ivf_pq": dim / 4 + 8, "opq_ivf_pq": dim / 4 + 8}[kind]


def extrapolate(rows: list[dict], key, n: int) -> tuple[float, str] | None:
    """``key(row)`` at ``n`` from the two largest smaller sizes measured (log-log line; with one size: linear)."""
    pts = sorted((r["n"], key(r)) for r in rows if r["n"] < n and key(r))
    if not pts:
        return None
    if len(pts) == 1:
        (n1, v1), = pts
        return v1 * n / n1, f"linear from {_sci(n1)} ({_fmt(v1)})"
    (n1, v1), (n2, v2) = pts[-2:]
    slope = math.log(v2 / v1) / math.log(n2 / n1)
    return v2 * (n / n2) ** slope, f"slope {slope:.2f} per decade from {_sci(n1)} → {_sci(n2)} ({_fmt(v1)} → {_fmt(v2)})"


def estimates(rows: list[dict], kind: str, n: int, dim: int) -> dict:
    """Peak RSS and build CPU seconds of ``kind`` at ``n``, extrapolated from the smaller sizes of this run."""
    done = [r for r in rows if r["kind"] == kind and r["dim"] == dim and "build" in r]
    rss = extrapolate(done, lambda r: r["peak_rss"], n) or (n * estimated_bytes_per_vector(kind, dim),
                                                          "bytes per vector × n")
    cpu = extrapolate(done, lambda r: r["build_cpu_s"], n)
    return {"rss": rss, "cpu": cpu}


def skip_reason(rows: list[dict], kind: str, n: int, dim: int, a: argparse.Namespace, data_gb: float = 0.0) -> str | None:
    e = estimates(rows, kind, n, dim)
    rss = f"peak RSS est. {e['rss'][0] / 1e9:.1f} GB ({e['rss'][1]})"
    cpu = f"build est. {e['cpu'][0] / 3600:.1f} h on one core ({e['cpu'][1]})" if e["cpu"] else None
    if data_gb > a.max_data_gb:
        return "; ".join(filter(None, [f"the float32 gallery alone is {data_gb:.1f} GB > {a.max_data_gb} GB",
                                       rss, cpu]))
    if e["rss"][0] > a.max_rss_gb * 1e9:
        return f"{rss} > {a.max_rss_gb} GB"
    if e["cpu"] and e["cpu"][0] > a.max_build_cpu_s:
        return f"{cpu} > {a.max_build_cpu_s / 3600:.1f} h"
    return None


def _sci(n: int) -> str:
    e = round(math.log10(n))
    return f"10^{e}" if 10 ** e == n else f"{n:,}"


def _fmt(v: float) -> str:
    return f"{v / 1e9:.2f} GB" if v > 1e6 else f"{v:.0f} s" if v >= 10 else f"{v:.2f} s"


def measure(kind: str, n: int, dim: int, d: Path, a: argparse.Namespace, coarse: dict | None, nice: bool) -> dict:
    index = d / f"{kind}.faiss"
    common = {"kind": kind, "n": n, "dim": dim, "dir": str(d), "index": str(index), "seed": a.seed}
    row: dict[str, Any] = {"kind": kind, "n": n, "dim": dim}
    try:
        b = run_stage("build", common, nice)
        row["build"] = b
        shared = coarse if kind in SHARED_COARSE else None
        row["build_cpu_s"] = round(b["train_cpu_s"] + b["add_cpu_s"]
                                   + (shared["train_cpu_s"] + shared["assign_cpu_s"] if shared else 0), 3)
        row["build_wall_s"] = round(b["train_wall_s"] + b["add_wall_s"]
                                    + (shared["train_wall_s"] + shared["assign_wall_s"] if shared else 0), 3)
        row["peak_rss"] = max(b["peak_rss"], shared["peak_rss"] if shared else 0)
        row["rss_baseline"] = b["rss_baseline"]
        row["factory"], row["index_bytes"] = b["factory"], b["index_bytes"]
        s = run_stage("search", {**common, "min_cpu_s": a.min_cpu_s}, nice)
        row.update({"search_stage": s, "search": s["search"], "recall@10": s["recall@10"],
                    "qps_batch1": s["batch1"]["qps_cpu"], "qps_batch32": s["batch32"]["qps_cpu"],
                    "qps_batch32_blas": s["batch32_blas"]["qps_cpu"],
                    "load_s": s["load_wall_s"], "rss_after_load": s["rss_after_load"]})
        row["mmap"] = {flag: run_stage("mmap", {**common, "flag": flag, "search": s["search"]}, nice)
                       for flag in MMAP_FLAGS}
    except StageError as e:
        row["error"] = str(e)
    finally:
        index.unlink(missing_ok=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10^4 × 128-d, 200 queries: the script works (seconds)")
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e4, 1e5, 1e6, 1e7])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-cpu-s", type=float, default=2.0, help="CPU seconds each queries/s figure runs for")
    ap.add_argument("--max-data-gb", type=float, default=8.0, help="largest float32 gallery generated")
    ap.add_argument("--max-rss-gb", type=float, default=10.0, help="largest peak RSS (estimated) built")
    ap.add_argument("--max-build-cpu-s", type=float, default=3600.0, help="longest build (estimated CPU s)")
    ap.add_argument("--nice-from", type=float, default=1e6, help="sizes from this up run under nice -n 10")
    ap.add_argument("--workdir", help="where galleries and indexes go (default: a temporary folder, removed)")
    ap.add_argument("--out", help="results JSON (default: results.json here; --quick: none, the table only)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the rest")
    ap.add_argument("--rerun-skipped", action="store_true",
                    help="with --resume: run again the selected (--sizes, --dims, --kinds) rows that were skipped")
    ap.add_argument("--report", action="store_true",
                    help="print the tables of --out (slopes and winners recomputed and saved in it)")
    ap.add_argument("--evidence", action="store_true",
                    help="print the EVIDENCE and FLAT_SMALLEST of deepmetric/index/auto.py that --out's winners give")
    ap.add_argument("--stage", choices=list(STAGES), help=argparse.SUPPRESS)
    ap.add_argument("--stage-args", help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.stage:
        Path(a.stage_out).write_text(json.dumps(STAGES[a.stage](json.loads(a.stage_args))))
        return 0
    if a.report or a.evidence:
        out = Path(a.out or Path(__file__).with_name("results.json"))
        result = json.loads(out.read_text())
        result["slopes"], result["winners"] = slopes(result["rows"]), winners(result["rows"])
        if a.report:
            save(out, result)  # an interrupted run's file gets its slopes and winners
        print(evidence(result) if a.evidence else table(result))
        return 0
    if a.quick:
        a.sizes, a.dims, a.queries, a.min_cpu_s = [1e4], [128], 200, 0.2
    sizes = sorted({int(s) for s in a.sizes})
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="deepmetric-index-bench-"))
    out = Path(a.out) if a.out else work / "results.json" if a.quick else Path(__file__).with_name("results.json")
    result = json.loads(out.read_text()) if a.resume and out.exists() else {"rows": [], "data": []}
    if a.rerun_skipped:  # those rows get measured now; the run keeps the setup it had, each new row its own date
        chosen = {int(s) for s in a.sizes}
        result["rows"] = [r for r in result["rows"]
                          if not ("skipped" in r and r["kind"] in a.kinds and r["dim"] in a.dims and r["n"] in chosen)]
    else:
        result["setup"] = setup(a)
    rows: list[dict] = result["rows"]
    try:
        for n in sizes:
            for dim in a.dims:
                todo = [k for k in a.kinds if not any(r["kind"] == k and r["n"] == n and r["dim"] == dim
                                                      for r in rows)]
                if not todo:
                    continue
                nice = n >= a.nice_from
                d = work / f"d{dim}_n{n}"
                d.mkdir(parents=True, exist_ok=True)
                data_gb = n * dim * 4 / 1e9
                if data_gb > a.max_data_gb:
                    for k in todo:
                        rows.append({"kind": k, "n": n, "dim": dim, "skipped": skip_reason(rows, k, n, dim, a, data_gb)})
                    save(out, result)
                    continue
                log(f"{dim}-d, n={n:,}: data")
                data = run_stage("data", {"n": n, "dim": dim, "dir": str(d), "seed": a.seed,
                                          "queries": a.queries}, nice)
                result["data"] = [x for x in result["data"] if (x["n"], x["dim"]) != (n, dim)]
                result["data"].append({"n": n, "dim": dim, **data})
                coarse = None
                for k in todo:
                    reason = skip_reason(rows, k, n, dim, a)
                    if reason:
                        rows.append({"kind": k, "n": n, "dim": dim, "skipped": reason})
                        log(f"  {k}: skipped, {reason}")
                        save(out, result)
                        continue
                    if k in SHARED_COARSE and coarse is None:
                        log("  shared IVF coarse quantizer")
                        coarse = run_stage("coarse", {"n": n, "dim": dim, "dir": str(d), "seed": a.seed}, nice)
                        result.setdefault("coarse", []).append({"n": n, "dim": dim, **coarse})
                    log(f"  {k}")
                    row = measure(k, n, dim, d, a, coarse, nice)
                    if a.rerun_skipped:
                        row["date"] = dt.date.today().isoformat()
                    rows.append(row)
                    log(f"    {brief(row)}")
                    save(out, result)
                shutil.rmtree(d, ignore_errors=True)
        result["slopes"] = slopes(rows)
        result["winners"] = winners(rows)
        save(out, result)
        print(table(result))
    finally:
        if not a.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def setup(a: argparse.Namespace) -> dict:
    import faiss

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    return {"date": dt.date.today().isoformat(), "faiss": faiss.__version__, "numpy": np.__version__,
            "cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(os.sysconf("SC_PHYS_PAGES")
                                                                      * os.sysconf("SC_PAGE_SIZE") / 2 ** 30, 1),
            "threads": 1, "queries": a.queries, "k": K, "recall_target": RECALL_TARGET, "seed": a.seed,
            "min_cpu_s": a.min_cpu_s, "nice_from": a.nice_from, "quick": a.quick}


def save(out: Path, result: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def brief(r: dict) -> str:
    if "error" in r:
        return r["error"]
    return (f"{r['factory']} {r['search']}: build {r['build_cpu_s']:.1f} s, recall {r['recall@10']:.3f}, "
            f"b1 {r['qps_batch1']:.0f}/s, b32 {r['qps_batch32']:.0f}/s, {r['index_bytes'] / 1e6:.1f} MB")


# ---------------------------------------------------------------------------------------------------- report
COSTS = {
    "build CPU s": lambda r: r["build_cpu_s"],
    "peak RSS above baseline": lambda r: r["peak_rss"] - r["rss_baseline"],
    "size": lambda r: r["index_bytes"],
    "s/query b1": lambda r: 1 / r["qps_batch1"],
    "s/query b32": lambda r: 1 / r["qps_batch32"],
    "load s": lambda r: r["load_s"],
}


def measured(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "recall@10" in r]


def slopes(rows: list[dict]) -> list[dict]:
    """Per (kind, dim): the least-squares slope of log10(cost) against log10(n), i.e. cost ∝ n^slope (× 10^slope
    per decade), over the sizes measured."""
    out = []
    for dim in sorted({r["dim"] for r in rows}):
        for kind in KINDS:
            rs = sorted((r for r in measured(rows) if r["kind"] == kind and r["dim"] == dim), key=lambda r: r["n"])
            if len(rs) < 2:
                continue
            x = np.log10([r["n"] for r in rs])
            fit = {name: round(float(np.polyfit(x, np.log10([max(f(r), 1e-9) for r in rs]), 1)[0]), 2)
                   for name, f in COSTS.items()}
            out.append({"kind": kind, "dim": dim, "sizes": [r["n"] for r in rs], **fit})
    return out


def winners(rows: list[dict]) -> list[dict]:
    """The `auto` rule (deepmetric.index.auto.best_index) applied to each (n, dim) measured."""
    out = []
    for dim, n in sorted({(r["dim"], r["n"]) for r in measured(rows)}):
        ms = [Measured(r["kind"], r["recall@10"], r["qps_batch1"], r["index_bytes"], r["search"])
              for r in measured(rows) if r["dim"] == dim and r["n"] == n]
        best = best_index(ms)
        out.append({"dim": dim, "n": n, "kind": best.kind if best else None,
                    "search": dict(best.search) if best else None,
                    "candidates": sorted(m.kind for m in ms), "skipped": sorted(
                        r["kind"] for r in rows if r["dim"] == dim and r["n"] == n and "skipped" in r)})
    return out


def evidence(result: dict) -> str:
    """The Python source of auto.py's EVIDENCE (each winner's figures) and FLAT_SMALLEST."""
    rows = {(r["dim"], r["n"], r["kind"]): r for r in measured(result["rows"])}
    lines = ["EVIDENCE: tuple[Evidence, ...] = ("]
    for w in result["winners"]:
        if w["kind"]:
            r = rows[(w["dim"], w["n"], w["kind"])]
            lines.append(f"    Evidence({w['dim']}, {w['n']:_}, {w['kind']!r}, {w['search']!r}, {r['recall@10']!r}, "
                         f"{r['qps_batch1']!r}),")
    lines.append(")")
    smallest = {}
    for (dim, n, kind), r in sorted(rows.items()):
        if kind == "flat" and dim not in smallest:
            smallest[dim] = r["qps_batch1"]
    lines.append(f"FLAT_SMALLEST: dict[int, float] = {smallest!r}")
    return "\n".join(lines)


def table(result: dict) -> str:
    rows = result["rows"]
    lines = ["| dim | n | index | factory | search | build s (CPU) | build peak RSS MB | size MB | loaded RSS MB | "
             "recall@10 | q/s b1 | q/s b32 | q/s b32 BLAS | load s | mmap (IO_FLAG_MMAP / _IFC) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    win = {(w["dim"], w["n"]): w["kind"] for w in result.get("winners", [])}
    for r in sorted(rows, key=lambda r: (r["dim"], r["n"], list(KINDS).index(r["kind"]))):
        label = KINDS[r["kind"]].label
        if win.get((r["dim"], r["n"])) == r["kind"]:
            label = f"**{label}**"
        head = f"| {r['dim']} | {_sci(r['n'])} | {label} |"
        if "skipped" in r or "error" in r:
            lines.append(f"{head} skipped: {r.get('skipped') or r['error']} |" + " |" * 11)
            continue
        mm = " / ".join(("mapped" if m.get("mapped") else "copied") if "error" not in m else "error"
                        for m in (r["mmap"][f] for f in MMAP_FLAGS))
        search = ", ".join(f"{k}={v}" for k, v in r["search"].items()) or "–"
        lines.append(f"{head} `{r['factory']}` | {search} | {r['build_cpu_s']:.1f} | {r['peak_rss'] / 2 ** 20:.0f} | "
                     f"{r['index_bytes'] / 1e6:.1f} | {r['rss_after_load'] / 2 ** 20:.0f} | {r['recall@10']:.3f} | {r['qps_batch1']:.0f} | "
                     f"{r['qps_batch32']:.0f} | {r['qps_batch32_blas']:.0f} | {r['load_s']:.3f} | {mm} |")
    if result.get("slopes"):
        lines += ["", "Slope per decade (cost ∝ n^slope):", "",
                  "| dim | index | sizes | " + " | ".join(COSTS) + " |", "|---|---|---|" + "---|" * len(COSTS)]
        for s in result["slopes"]:
            lines.append(f"| {s['dim']} | {KINDS[s['kind']].label} | {_sci(s['sizes'][0])}–{_sci(s['sizes'][-1])} | "
                         + " | ".join(f"{s[c]:.2f}" for c in COSTS) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
