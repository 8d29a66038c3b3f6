"""Benchmark: every seed method and every baseline on the built-in glyph set, same backbone / embedding size /
batch / number of iterations, evaluated zero-shot on the held-out classes.

    python benchmarks/methods/run.py --seeds 0 1 --out benchmarks/methods/results.json

Each (method, seed) runs in its own subprocess so that its peak RSS (``resource.getrusage``) is its own.
Training goes through the project's loop (`deepmetric.training.loop.fit`), evaluation through
`deepmetric.evaluation.protocol` (MAP@R, Recall@K, NMI on the test classes, leave-one-out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def method_order() -> list[str]:
    """Every registered method, the seed methods first (`deepmetric.methods.METHODS`, by its `kind` metadata)."""
    from deepmetric.methods import METHODS

    return METHODS.names(kind="seed") + METHODS.names(kind="baseline")


def method_kind(name: str) -> str:
    from deepmetric.methods import METHODS

    return METHODS.meta(name)["kind"] if name in METHODS else "–"


def make_dataset(root: Path, num_classes: int, image_size: int):
    """Render the glyph set (CUB layout) and build its manifest (no validation slice: last epoch is kept)."""
    from deepmetric.data.config import DataParams
    from deepmetric.data.glyphs import GlyphParams, render_glyph_dataset
    from deepmetric.data.manifest import build_manifest
    from deepmetric.data.readers import read_dataset

    if not (root / "images.txt").exists():
        files = render_glyph_dataset(GlyphParams(num_classes=num_classes, image_size=image_size))
        for rel, data in files.items():
            dest = root.joinpath(*rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    cfg = DataParams(dataset="glyphs", root=str(root), val_classes=0)
    out = build_manifest(read_dataset("glyphs", str(root), cfg), str(root), workers=1)
    return out[0] if isinstance(out, tuple) else out


def run_one(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)  # D&C's k-means and the NMI k-means: the same thread budget
    from deepmetric.evaluation.embed import method_embedder
    from deepmetric.evaluation.protocol import embed_split, score, zero_shot_split
    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.loop import fit
    from deepmetric.training.model_io import load_model

    manifest = make_dataset(Path(args.data), args.classes, args.size)
    train = {
        "method": args.method, "seed": args.seed, "epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch,
        "embedding_dim": args.embedding_dim, "progress": False, "device": "cpu",
        # decoding in the training process: its CPU time (fit_cpu_seconds) then covers the whole iteration
        "num_workers": 0,
        "batch": {"classes_per_batch": args.classes_per_batch, "samples_per_class": args.samples_per_class},
        "optimizer": {"name": "adam", "lr": args.lr, "weight_decay": 1e-4, "milestones": args.milestones,
                      "gamma": 0.1},
        # same backbone for every method; from scratch, so BatchNorm is trainable for all (frozen statistics of an
        # untrained network are meaningless); pooling stays each method's own choice
        "backbone": {"name": "resnet18", "pretrained": False, "frozen_bn": False},
        "augment": {"scale_min": 0.6, "hflip": False},
        "methods": json.loads(args.method_params),
    }
    cfg, params = parse_train(train)
    spec = InputConfig(resize=args.size, crop=args.size)
    t0, c0 = time.perf_counter(), time.process_time()
    result = fit(manifest, args.data, cfg, params, spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    method, _ = load_model(result.payload)
    split = zero_shot_split(manifest, "glyphs")
    q, g = embed_split(method_embedder(method, spec.mean, spec.std), split, args.data, spec, 256,
                       torch.device("cpu"), False, "bench")
    metrics = score(q, g, split, 0)
    seconds = sum(r["seconds"] for r in result.log)
    images = sum(r["images_per_s"] * r["seconds"] for r in result.log)
    return {
        "method": args.method, "seed": args.seed,
        "map@r": metrics["map@r"], "recall@1": metrics["recall@1"], "nmi": metrics.get("nmi", float("nan")),
        "train_images_per_s": images / max(seconds, 1e-9), "train_seconds": seconds, "wall_seconds": wall,
        # CPU seconds of the whole fit (1 torch thread: the work done, whatever else shares the machine)
        "fit_cpu_seconds": cpu, "threads": args.threads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "final_loss": result.log[-1].get("loss"), "test_queries": int(len(split.query)),
        "params": params.model_dump(mode="json"), "iterations": cfg.epochs * cfg.steps_per_epoch,
        "train_images": int((manifest["split"] == "train").sum()),
        "train_classes": int(manifest.loc[manifest["split"] == "train", "label"].nunique()),
        "num_params": int(sum(p.numel() for p in method.parameters())),
        "train": cfg.model_dump(mode="json", exclude={"methods"}), "code": _code_version(),
    }


def _code_version() -> str:
    """The deepmetric source the run imported: git commit of its checkout (+ "-dirty"), or the path."""
    import deepmetric

    src = Path(deepmetric.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return str(src)


def table(results: list[dict], label: str | None = None) -> str:
    """Markdown: mean ± sample standard deviation over seeds per method (n seeds shown), and the CPU time per
    iteration relative to `margin` (each run's fit CPU seconds / iterations, 1 torch thread; mean over seeds).
    `label`: only rows whose `label` field matches (ablations), else only unlabelled rows."""
    import statistics

    rows = ["| method | kind | seeds | MAP@R % | Recall@1 % | NMI % | CPU s / iteration | time vs margin | "
            "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    order = method_order()
    by: dict[str, list[dict]] = {}
    for r in results:
        if "error" not in r and r.get("label") == label:
            by.setdefault(r["method"], []).append(r)

    def per_it(rs: list[dict]) -> float | None:
        v = [r["fit_cpu_seconds"] / r["iterations"] for r in rs if "fit_cpu_seconds" in r]
        return statistics.fmean(v) if v else None

    ref = per_it(by.get("margin", []))
    for m in sorted(by, key=lambda m: order.index(m) if m in order else 99):
        rs = by[m]

        def fmt(key: str, scale: float = 100.0, digits: int = 1) -> str:
            v = [r[key] * scale for r in rs]
            mean = statistics.fmean(v)
            return f"{mean:.{digits}f}" + (f" ± {statistics.stdev(v):.{digits}f}" if len(v) > 1 else "")

        kind = method_kind(m)
        it = per_it(rs)
        rel = f"{it / ref:.2f}×" if it is not None and ref else "–"
        rows.append(f"| `{m}` | {kind} | {len(rs)} | {fmt('map@r')} | {fmt('recall@1')} | {fmt('nmi')} | "
                    f"{f'{it:.2f}' if it is not None else '–'} | {rel} | {fmt('peak_rss_mb', 1.0, 0)} |")
    failed = [f"{r['method']} (seed {r['seed']})" for r in results if "error" in r and r.get("label") == label]
    if failed:
        rows.append("")
        rows.append("Failed runs: " + ", ".join(failed))
    return "\n".join(rows)


def ablation_table(results: list[dict]) -> str:
    """Markdown: one row per labelled run (ablations: one seed each; the label names what it changes)."""
    rows = ["| ablation (`--label`) | method | seed | MAP@R % | Recall@1 % | NMI % | CPU s / iteration |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("label") is None or "error" in r:
            continue
        it = r["fit_cpu_seconds"] / r["iterations"] if "fit_cpu_seconds" in r else None
        rows.append(f"| {r['label']} | `{r['method']}` | {r['seed']} | {100 * r['map@r']:.1f} | "
                    f"{100 * r['recall@1']:.1f} | {100 * r['nmi']:.1f} | {f'{it:.2f}' if it else '–'} |")
    return "\n".join(rows)


def seed_table(results: list[dict], ref: str = "margin") -> str:
    """Markdown: MAP@R of every run by seed, one row per method (labelled runs as `method [label]`), and the
    difference to `ref` (unlabelled) over the seeds both have: mean ± sample standard deviation of the
    per-seed differences, so a gap can be read against the seed-to-seed spread of that same gap."""
    import statistics

    by: dict[tuple[str, str | None], dict[int, float]] = {}
    for r in results:
        if "error" not in r:
            by.setdefault((r["method"], r.get("label")), {})[r["seed"]] = 100 * r["map@r"]
    seeds = sorted({s for v in by.values() for s in v})
    order = method_order()
    base = by.get((ref, None), {})
    rows = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean | vs `{ref}` (same seeds) |",
            "|---|" + "---|" * (len(seeds) + 2)]
    for key in sorted(by, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[1] or "")):
        v = by[key]
        name = f"`{key[0]}`" + (f" [{key[1]}]" if key[1] else "")
        cells = [f"{v[s]:.1f}" if s in v else "–" for s in seeds]
        diffs = [v[s] - base[s] for s in seeds if s in v and s in base]
        if key == (ref, None) or not diffs:
            delta = "–"
        else:
            spread = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
            delta = f"{statistics.fmean(diffs):+.1f}{spread} ({len(diffs)})"
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.fmean(v.values()):.1f} | {delta} |")
    return "\n".join(rows)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` whole: a run killed mid-write leaves the previous results, never half a JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method, seeds first")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--classes", type=int, default=100, help="glyph classes (half train, half test)")
    ap.add_argument("--size", type=int, default=32, help="image size (px)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps-per-epoch", type=int, default=10)
    ap.add_argument("--classes-per-batch", type=int, default=8)
    ap.add_argument("--samples-per-class", type=int, default=4)
    ap.add_argument("--embedding-dim", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--milestones", nargs="*", type=int, default=[], help="epochs (0-based) where the lr drops × 0.1")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the 2-core machine is shared)")
    ap.add_argument("--method-params", default=json.dumps({"divide_conquer": {"num_clusters": 4,
                                                                               "full_embedding_epoch": 0.5}}))
    ap.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "deepmetric_bench_glyphs"))
    ap.add_argument("--out", default="benchmarks/methods/results.json",
                    help="results JSON (appended to; --by-seed takes several, comma-separated)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    ap.add_argument("--label", help="a name stored with each result (ablations); --table shows only that label")
    ap.add_argument("--ablations", action="store_true", help="print one row per labelled run of --out and exit")
    ap.add_argument("--by-seed", action="store_true",
                    help="print MAP@R per seed of every method and label in --out (with the paired gap to --vs); exit")
    ap.add_argument("--vs", default="margin", help="--by-seed: the method every gap is measured to")
    ap.add_argument("--one", action="store_true", help="(internal) run one method/seed and print JSON")
    ap.add_argument("--method")
    ap.add_argument("--seed", type=int)
    args = ap.parse_args()
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    if args.one:
        print("RESULT " + json.dumps({**run_one(args), "label": args.label}), flush=True)
        return
    if args.table:
        print(table(json.loads(Path(args.out).read_text()), args.label))
        return
    if args.ablations:
        print(ablation_table(json.loads(Path(args.out).read_text())))
        return
    if args.by_seed:
        print(seed_table([r for f in args.out.split(",") for r in json.loads(Path(f).read_text())], args.vs))
        return
    from deepmetric.methods import METHODS
    from deepmetric.registry import UnknownNameError

    methods = args.methods or method_order()
    try:
        for m in methods:
            METHODS.check(m, what="--methods entry")
    except UnknownNameError as exc:
        ap.error(str(exc))
    make_dataset(Path(args.data), args.classes, args.size)  # render once, before the timed runs
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    done = {(r["method"], r["seed"], r.get("label")) for r in results}
    passthrough = [a for a in sys.argv[1:] if a not in ("--one",)]
    for seed in args.seeds:
        for method in methods:
            if (method, seed, args.label) in done:
                continue
            cmd = [sys.executable, __file__, *passthrough, "--one", "--method", method, "--seed", str(seed),
                   "--data", args.data]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{method} seed {seed} FAILED:\n{proc.stderr[-3000:]}", flush=True)
                results.append({"method": method, "seed": seed, "label": args.label, "error": proc.stderr[-500:]})
            else:
                r = json.loads(line[0][len("RESULT "):])
                results.append(r)
                print(f"{method:17s} seed {seed}: MAP@R {r['map@r']:.4f} R@1 {r['recall@1']:.4f} "
                      f"NMI {r['nmi']:.4f} {r['train_images_per_s']:.1f} img/s peak {r['peak_rss_mb']:.0f} MB "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
            _write_atomic(out, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
