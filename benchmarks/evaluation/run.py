"""Evaluation at catalogue scale: the project's metrics against pytorch-metric-learning's AccuracyCalculator at SOP
size, the cost of thresholds, re-ranking and the failure report at 100,000 images, and what re-ranking does to
MAP@R / Recall@1 on the built-in glyph set.

    nice -n 10 .venv/bin/python benchmarks/evaluation/run.py sop          # 60,000 x 512, ours vs PML (+ the
                                                                           # previous faiss-list path)
    nice -n 10 .venv/bin/python benchmarks/evaluation/run.py catalogue    # 100,000 x 512: every function
    nice -n 10 .venv/bin/python benchmarks/evaluation/run.py rerank --model data/06_models/model.pt \\
        --manifest data/02_intermediate/manifest_validated.parquet --data-root data/01_raw/glyphs

Synthetic embeddings (``synthetic``): SOP-like class sizes (2-12 images, uniform), 12 categories; a class centre
is its category's centre plus an offset, an image its class centre plus noise, L2-normalised; the noise is set so
that Recall@1 and MAP@R sit near good SOP models' (about 0.8 and 0.45). Every measured job runs in its own
process (``_job``), so its peak RSS (VmHWM: the child's own high-water mark) is its own; the jobs of a comparison
alternate (ours, theirs, ours, theirs, …) so that a change of the shared machine's load hits both. Wall and CPU
seconds are reported (CPU: user + system of all the job's threads). Each section prints a markdown table and
writes its JSON next to this file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT))
HERE = Path(__file__).resolve().parent
SOP_KS = (1, 10, 100, 1000)
FMR = (0.01, 0.001)


# --- data -------------------------------------------------------------------------------------------------------
def synthetic(n: int, dim: int, seed: int = 0, categories: int = 12, spread: float = 0.9,
              noise: float = 2.15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(embeddings float32 [n, dim], labels, categories): classes of 2-12 images in ``categories`` groups.

    Category centres ~ N(0, I), class centres = category + ``spread`` · N(0, I), images = class + ``noise`` ·
    N(0, I) (per-coordinate standard deviations, times 1/√dim so the scale does not depend on dim)."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(2, 13)))
    sizes[-1] -= sum(sizes) - n
    if sizes[-1] < 2:  # keep every class a class (2 images at least)
        sizes[-2] += sizes.pop()
    labels = np.repeat(np.arange(len(sizes)), sizes)
    class_cat = rng.integers(0, categories, size=len(sizes))
    scale = 1 / np.sqrt(dim)
    cat_centre = rng.standard_normal((categories, dim), dtype=np.float32) * scale
    class_centre = cat_centre[class_cat] + spread * scale * rng.standard_normal((len(sizes), dim), dtype=np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 8192):  # in chunks: the generator's own peak stays small
        b = min(a + 8192, n)
        x[a:b] = class_centre[labels[a:b]] + noise * scale * rng.standard_normal((b - a, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(n)  # classes are not contiguous in a real split
    return x[perm], labels[perm], class_cat[labels][perm]


def _save(folder: Path, name: str, x: np.ndarray, y: np.ndarray, c: np.ndarray | None = None) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, x=x, y=y, **({} if c is None else {"c": c}))
    return path


# --- measured jobs (each in its own process) ------------------------------------------------------------------
def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field)).split()[1]) / 1024


def _previous_path(x, y):
    """The evaluation before issue 21: one faiss top-max(K, R) list per query, metrics on the [N, 1000] labels."""
    from deepmetric.evaluation.knn import knn
    from deepmetric.evaluation.metrics import map_at_r, recall_at_k

    classes, counts = np.unique(y, return_counts=True)
    r = counts[np.searchsorted(classes, y)] - 1
    width = int(min(len(y) - 1, max(max(SOP_KS), int(r.max()))))
    _, idx = knn(x, x, width, exclude_self=True)
    nl = y[idx]
    out = {f"recall@{k}": v for k, v in recall_at_k(nl, y, SOP_KS).items()}
    out["map@r"] = map_at_r(nl, y, np.minimum(r, width))
    rel = (nl == y[:, None]) & (np.arange(width)[None, :] < r[:, None])
    valid = r > 0
    out["r_precision"] = float((rel.sum(axis=1)[valid] / r[valid]).mean())
    return out


def _job(name: str, data: str, extra: dict) -> dict:
    d = np.load(data)
    x, y = d["x"], d["y"]
    before = _rss_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    result: dict = {}
    if name == "ours":
        from deepmetric.evaluation.metrics import evaluate_embeddings

        result = evaluate_embeddings(x, y, ks=SOP_KS, with_nmi=False)
    elif name == "pml":
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        before = _rss_mb("VmRSS")  # torch's import is not the calculator's work
        t0, c0 = time.perf_counter(), time.process_time()
        calc = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1", "r_precision"),
                                  k="max_bin_count", device=torch.device("cpu"))
        result = calc.get_accuracy(x, y)
    elif name == "previous":
        result = _previous_path(x, y)
    elif name == "nmi":
        from deepmetric.evaluation.metrics import nmi

        result = {"nmi": nmi(x, y)}
    elif name == "thresholds":
        from deepmetric.evaluation.verification import verification_report

        v = np.load(extra["validation"])
        report = verification_report((v["x"], v["y"]), (x, y), fmr=FMR)
        result = {"thresholds": report["thresholds"], "validation_images": report["validation"]["images"],
                  "test_positive_pairs": report["test"]["positive_pairs"],
                  "negatives_used": report["test"]["negative_pairs"]["used"],
                  "test": {f: {k: p[k] for k in ("fnmr", "fnmr_ci", "fmr", "fmr_ci")}
                           for f, p in report["test"]["operating_points"].items()}}
    elif name == "failures":
        from deepmetric.evaluation.failures import failure_report
        from deepmetric.evaluation.knn import rank_gallery

        ranking = rank_gallery(x, y, width=10)
        t_rank = time.perf_counter() - t0
        report = failure_report(ranking, y, y, query_categories=d["c"], k=10)
        result = {"rank_gallery_s": round(t_rank, 1), "report_s": round(time.perf_counter() - t0 - t_rank, 1),
                  "summary": report["summary"]}
    elif name == "qe":  # extra["queries"] leave-one-out queries against the whole set
        from deepmetric.evaluation.rerank import query_expansion

        n = extra["queries"]
        sims, ids = query_expansion(x[:n], x, k=100, n=extra["n"], alpha=3.0)
        result = {"queries": n, "gallery": len(x)}
    elif name == "dba":
        from deepmetric.evaluation.rerank import database_augmentation

        database_augmentation(x, n=extra["n"], alpha=3.0)
        result = {"gallery": len(x)}
    elif name == "k_reciprocal":
        from deepmetric.evaluation.rerank import k_reciprocal

        k_reciprocal(x, None, k=100, k1=extra["k1"], k2=extra["k2"])
        result = {"queries": len(x), "k": 100}
    elif name == "latency":
        result = _latency(x, extra["n"], extra["repeats"])
    else:
        raise SystemExit(f"unknown job {name}")
    return {"job": name, "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2),
            "rss_before_mb": round(before, 1), "peak_rss_mb": round(_rss_mb("VmHWM"), 1), "result": result}


def _latency(x: np.ndarray, n: int, repeats: int) -> dict:
    """Batch-1 search latency against the whole set as a flat index: plain vs α-QE (search, expand, search)."""
    import faiss

    from deepmetric.evaluation.rerank import expanded_queries

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    queries = x[np.linspace(0, len(x) - 1, repeats).astype(int)]
    plain, qe = [], []
    for q in queries:  # interleaved, one query at a time
        q = q[None, :]
        t = time.perf_counter()
        index.search(q, 10)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        index.search(expanded_queries(q, x, index.search, n=n, alpha=3.0), 10)
        qe.append(time.perf_counter() - t)
    return {"gallery": len(x), "plain_ms": 1000 * statistics.median(plain), "qe_ms": 1000 * statistics.median(qe)}


def run_job(name: str, data: Path, **extra) -> dict:
    cmd = [sys.executable, __file__, "_job", name, str(data), json.dumps(extra)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"job {name} failed:\n{out.stderr[-4000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {name} {extra or ''}: {row['wall_s']} s wall, {row['cpu_s']} s CPU, peak {row['peak_rss_mb']} MB",
          file=sys.stderr, flush=True)
    return row


def _partial(out: str, res: dict) -> None:
    """The results so far (a long section can be stopped without losing the finished jobs)."""
    Path(out).write_text(json.dumps({**res, "partial": True}, indent=2) + "\n")


def _machine() -> dict:
    import faiss

    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(),
            "load_average_start": os.getloadavg(), "numpy": np.__version__, "faiss": faiss.__version__,
            "niceness": os.nice(0), "date": time.strftime("%Y-%m-%d %H:%M")}


# --- sections ---------------------------------------------------------------------------------------------------
def section_sop(args) -> dict:
    x, y, _ = synthetic(args.n, args.dim, args.seed)
    machine = _machine()
    with tempfile.TemporaryDirectory() as tmp:
        data = _save(Path(tmp), "sop", x, y)
        del x, y
        runs: dict[str, list[dict]] = {"ours": [], "pml": [], "previous": []}
        jobs = [name for _ in range(args.repeats) for name in ("ours", "pml")]
        for name in jobs + ([] if args.skip_previous else ["previous"]):
            runs[name].append(run_job(name, data))
            _partial(args.out, {"n": args.n, "dim": args.dim, "seed": args.seed, "machine": machine, "runs": runs})
    machine["load_average_end"] = os.getloadavg()
    ours, pml = runs["ours"], runs["pml"]
    pairs = [{"speed_wall": p["wall_s"] / o["wall_s"], "speed_cpu": p["cpu_s"] / o["cpu_s"],
              "memory": o["peak_rss_mb"] / p["peak_rss_mb"],
              "memory_increment": (o["peak_rss_mb"] - o["rss_before_mb"]) / (p["peak_rss_mb"] - p["rss_before_mb"])}
             for o, p in zip(ours, pml, strict=True)]
    o_res, p_res = ours[0]["result"], pml[0]["result"]
    agreement = {
        "map@r": o_res["map@r"] - p_res["mean_average_precision_at_r"],
        "recall@1 - precision_at_1": o_res["recall@1"] - p_res["precision_at_1"],
        "r_precision": o_res["r_precision"] - p_res["r_precision"],
    }
    if runs["previous"]:
        agreement.update({f"previous {k}": o_res[k] - runs["previous"][0]["result"][k] for k in o_res})
    return {"n": args.n, "dim": args.dim, "seed": args.seed, "machine": machine, "runs": runs, "pairs": pairs,
            "agreement": agreement}


def section_catalogue(args) -> dict:
    machine = _machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        x, y, c = synthetic(args.n, args.dim, args.seed)
        data = _save(Path(tmp), "catalogue", x, y, c)
        vx, vy, _ = synthetic(args.validation, args.dim, args.seed + 1)
        validation = _save(Path(tmp), "validation", vx, vy)
        del x, y, c, vx, vy
        jobs = [("ours", {}), ("failures", {}), ("thresholds", {"validation": str(validation)}),
                ("qe", {"queries": args.qe_queries, "n": args.qe_n}), ("latency", {"n": args.qe_n, "repeats": 200}),
                ("dba", {"n": args.dba_n})]
        jobs += [] if args.skip_k_reciprocal else [("k_reciprocal", {"k1": 20, "k2": 6})]
        jobs += [("nmi", {})] if args.nmi else []
        for name, extra in jobs:
            rows.append(run_job(name, data, **extra))
            _partial(args.out, {"n": args.n, "dim": args.dim, "machine": machine, "rows": rows})
    machine["load_average_end"] = os.getloadavg()
    return {"n": args.n, "dim": args.dim, "validation": args.validation, "machine": machine, "rows": rows}


# --- re-ranking quality on the built-in set ---------------------------------------------------------------------
def glyph_embeddings(model: str, manifest: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    """The trained model's embeddings of the test split (the evaluate stage's transform), in manifest order."""
    import pandas as pd
    import torch

    from deepmetric.data.dataset import ManifestImages
    from deepmetric.evaluation.embed import embed_dataset, method_embedder
    from deepmetric.io.datasets import TorchDataset
    from deepmetric.training.model_io import load_model

    method, spec = load_model(TorchDataset(model).load())
    test = pd.read_parquet(manifest).query("split == 'test'").reset_index(drop=True)
    ds = ManifestImages(root, test["path"], spec)
    emb = embed_dataset(method_embedder(method.eval(), spec.mean, spec.std), ds, 128, torch.device("cpu"))
    return emb, test["label"].to_numpy()


def _list_metrics(ids: np.ndarray, ql: np.ndarray, gl: np.ndarray, same: bool) -> dict:
    from deepmetric.evaluation.knn import relevant_counts
    from deepmetric.evaluation.metrics import map_at_r

    r = relevant_counts(ql, gl, same)
    nl = gl[ids]
    return {"map@r": 100 * map_at_r(nl, ql, r), "recall@1": 100 * float((nl[:, 0] == ql).mean())}


def _settings() -> list[tuple[str, dict]]:
    out = [("none", {})]
    out += [(f"alpha-QE n={n}", {"qe": n}) for n in (1, 2, 3, 5)]
    out += [(f"DBA n={n}", {"dba": n}) for n in (1, 2, 3, 5)]
    out += [("DBA n=2 + alpha-QE n=2", {"dba": 2, "qe": 2})]
    out += [(f"k-reciprocal k1={k1} k2={k2}", {"kr": (k1, k2)}) for k1, k2 in ((20, 6), (10, 3), (5, 2))]
    return out


def _rerank(q, g, ql, gl, same: bool, how: dict, k: int) -> tuple[np.ndarray, float, float]:
    """(re-ranked ids, one-off seconds (DBA's gallery pass), seconds of the per-query work for all queries)."""
    from deepmetric.evaluation.knn import knn
    from deepmetric.evaluation.rerank import database_augmentation, k_reciprocal, query_expansion

    t = time.perf_counter()
    if "kr" in how:
        k1, k2 = how["kr"]
        _, ids = k_reciprocal(q, None if same else g, k, k1=k1, k2=k2)
        return ids, 0.0, time.perf_counter() - t
    gallery = database_augmentation(g, n=how["dba"], alpha=3.0) if "dba" in how else g
    one_off = time.perf_counter() - t
    t = time.perf_counter()
    if "qe" in how:
        _, ids = query_expansion(q, gallery, k, n=how["qe"], alpha=3.0, exclude_self=same)
    else:
        _, ids = knn(q, gallery, k, exclude_self=same)
    return ids, one_off, time.perf_counter() - t


def section_rerank(args) -> dict:
    if args.embeddings:
        d = np.load(args.embeddings)
        emb, labels = d["x"], d["y"]
    else:
        emb, labels = glyph_embeddings(args.model, args.manifest, args.data_root)
    k = 100
    # Leave-one-out (the project's protocol) and a serving-like split: every other image of a class is a query,
    # the rest the gallery (DBA then never mixes a query into the gallery vectors it is compared with).
    order = np.argsort(labels, kind="stable")
    rank_in_class = np.arange(len(labels)) - np.searchsorted(labels[order], labels[order])
    is_query = np.zeros(len(labels), dtype=bool)
    is_query[order] = rank_in_class % 2 == 0
    protocols = {
        "leave-one-out": (emb, emb, labels, labels, True),
        "query/gallery split": (emb[is_query], emb[~is_query], labels[is_query], labels[~is_query], False),
    }
    rows = []
    for name, how in _settings():
        row = {"setting": name}
        for pname, (q, g, ql, gl, same) in protocols.items():
            ids, one_off, seconds = _rerank(q, g, ql, gl, same, how, k)
            row[pname] = {**_list_metrics(ids, ql, gl, same), "ms_per_query": 1000 * seconds / len(q),
                          "one_off_s": one_off}
        rows.append(row)
        print(f"  {name}: {row}", file=sys.stderr, flush=True)
    latency = {f"alpha-QE n={n}": _latency(emb[~is_query], n, 200) for n in (1, 2)}
    return {"images": int(len(labels)), "classes": int(len(np.unique(labels))), "k": k,
            "queries_split": int(is_query.sum()), "machine": _machine(), "rows": rows, "latency": latency}


# --- tables -----------------------------------------------------------------------------------------------------
def table_sop(res: dict) -> str:
    lines = ["| run | ours wall s | PML wall s | speed (wall) | speed (CPU) | ours peak MB | PML peak MB | memory ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for i, (o, p, r) in enumerate(zip(res["runs"]["ours"], res["runs"]["pml"], res["pairs"], strict=True), 1):
        lines.append(f"| {i} | {o['wall_s']:.1f} | {p['wall_s']:.1f} | {r['speed_wall']:.2f}x | {r['speed_cpu']:.2f}x "
                     f"| {o['peak_rss_mb']:.0f} | {p['peak_rss_mb']:.0f} | 1/{1 / r['memory']:.1f} |")
    for prev in res["runs"]["previous"]:
        lines.append(f"| previous (faiss top-1000 list) | {prev['wall_s']:.1f} | | | | {prev['peak_rss_mb']:.0f} | | |")
    lines.append("")
    lines.append("| metric | ours | PML | difference |")
    lines.append("|---|---|---|---|")
    o, p = res["runs"]["ours"][0]["result"], res["runs"]["pml"][0]["result"]
    for ours_key, pml_key in (("map@r", "mean_average_precision_at_r"), ("recall@1", "precision_at_1"),
                              ("r_precision", "r_precision")):
        lines.append(f"| {ours_key} / {pml_key} | {o[ours_key]:.6f} | {p[pml_key]:.6f} | "
                     f"{o[ours_key] - p[pml_key]:+.1e} |")
    for k in SOP_KS[1:]:
        lines.append(f"| recall@{k} | {o[f'recall@{k}']:.6f} | (not computed) | |")
    return "\n".join(lines)


def table_catalogue(res: dict) -> str:
    lines = ["| job | wall s | CPU s | peak RSS MB | RSS before MB |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['job']} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                     f"{r['rss_before_mb']:.0f} |")
    return "\n".join(lines)


def table_rerank(res: dict) -> str:
    lines = ["| setting | LOO MAP@R | LOO R@1 | split MAP@R | split R@1 | split ms/query (all queries) | one-off s |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        a, b = r["leave-one-out"], r["query/gallery split"]
        lines.append(f"| {r['setting']} | {a['map@r']:.2f} | {a['recall@1']:.2f} | {b['map@r']:.2f} | "
                     f"{b['recall@1']:.2f} | {b['ms_per_query']:.3f} | {b['one_off_s']:.2f} |")
    lines += ["", "| batch-1 search, gallery of the split | plain ms | with alpha-QE ms |", "|---|---|---|"]
    for name, lat in res["latency"].items():
        lines.append(f"| {name} ({lat['gallery']} images) | {lat['plain_ms']:.3f} | {lat['qe_ms']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_job":
        print(json.dumps(_job(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="section", required=True)
    s = sub.add_parser("sop", help="60,000 x 512: ours vs pytorch-metric-learning's AccuracyCalculator")
    s.add_argument("--n", type=int, default=60_000)
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--repeats", type=int, default=1, help="ours/PML pairs, alternating")
    s.add_argument("--skip-previous", action="store_true")
    s.add_argument("--out", default=str(HERE / "results_sop.json"))
    c = sub.add_parser("catalogue", help="100,000 x 512: time and peak RSS of every function")
    c.add_argument("--n", type=int, default=100_000)
    c.add_argument("--dim", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--validation", type=int, default=20_000, help="images of the validation split (thresholds)")
    c.add_argument("--qe-queries", type=int, default=10_000)
    c.add_argument("--qe-n", type=int, default=2)
    c.add_argument("--dba-n", type=int, default=2)
    c.add_argument("--skip-k-reciprocal", action="store_true")
    c.add_argument("--nmi", action="store_true", help="also NMI (faiss k-means with one centroid per class)")
    c.add_argument("--out", default=str(HERE / "results_catalogue.json"))
    r = sub.add_parser("rerank", help="re-ranking quality on the built-in glyph set")
    r.add_argument("--model", default="data/06_models/model.pt")
    r.add_argument("--manifest", default="data/02_intermediate/manifest_validated.parquet")
    r.add_argument("--data-root", default="data/01_raw/glyphs")
    r.add_argument("--embeddings", help="an .npz with x (embeddings) and y (labels) instead of the model")
    r.add_argument("--out", default=str(HERE / "results_rerank.json"))
    args = ap.parse_args()
    section, table = {"sop": (section_sop, table_sop), "catalogue": (section_catalogue, table_catalogue),
                      "rerank": (section_rerank, table_rerank)}[args.section]
    res = section(args)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
