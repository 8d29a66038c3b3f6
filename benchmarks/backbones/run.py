"""Which backbone: quality on the built-in glyph set, and CPU throughput at 224 px.

    .venv/bin/python benchmarks/backbones/run.py --root data/01_raw/glyphs --epochs 4 --steps 40 \
        --backbones resnet18 efficientnet_lite0:pretrained resnet18:pretrained-free
    nice -n 10 .venv/bin/python benchmarks/backbones/run.py --mode throughput \
        --out benchmarks/backbones/results_throughput.json

Quality (default): same method, batch, steps and embedding size; zero-shot MAP@R, Recall@1, NMI and training
images/s as a Markdown table for benchmarks/backbones/README.md (the untrained / pretrained-only network scored too).
Throughput: training (forward, the margin loss, backward, Adam step) and inference (the L2-normalised test embedding,
no gradient) images/s of ViT-Tiny/16, ViT-Small/16 (timm) and ResNet-18/50 (torchvision) at 224 px, fp32 and bf16
autocast, in one process, the models interleaved round by round so that each sees the same machine load; ratios are
against ResNet-50 fp32 of the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from deepmetric.evaluation.protocol import EvaluateConfig, evaluate_model
from deepmetric.models.backbones import BACKBONES
from deepmetric.registry import UnknownNameError
from deepmetric.runtime import init_seed, seed_everything
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.loop import fit
from deepmetric.training.model_io import build_method, load_model
from pipelines.ingest.nodes import ingest


THROUGHPUT = ("timm/vit_tiny_patch16_224", "timm/vit_small_patch16_224", "resnet18", "resnet50")


def throughput(backbones: tuple[str, ...], precisions: tuple[str, ...], size: int, train_batch: int,
               infer_batch: int, rounds: int, steps: int) -> list[dict]:
    """images/s per (backbone, precision, train|infer): the median over ``rounds`` rounds of ``steps`` calls each,
    every configuration measured once per round (interleaved), after one warm-up call."""
    from deepmetric.training.loop import make_optimizer
    from deepmetric.training.precision import Precision

    cpu = torch.device("cpu")
    setups = []
    for name in backbones:
        for precision in precisions:
            torch.manual_seed(0)
            cfg, params = parse_train({"method": "margin", "embedding_dim": 128, "backbone": {"name": name},
                                       "precision": precision, "device": "cpu"})
            method = build_method(cfg, params, 100)
            Precision(cpu, precision).prepare(method)
            setups.append((name, precision, method, make_optimizer(method, cfg), Precision(cpu, precision)))
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(train_batch, 3, size, size, generator=g)
    labels = torch.arange(train_batch) // 4  # 4 images per class, as the class-balanced batches
    x_infer = torch.randn(infer_batch, 3, size, size, generator=g)

    def train_step(method, optimizer, precision) -> None:
        method.train()
        loss = method.loss(method(x_train), labels)
        precision.backward_step(loss, optimizer)

    def infer_step(method, *_) -> None:
        method.eval()
        with torch.no_grad():
            method.embed(x_infer)

    samples: dict[tuple[str, str, str], list[float]] = {}
    for r in range(rounds + 1):  # round 0: warm-up
        for name, precision, method, optimizer, prec in setups:
            for kind, fn, batch in (("train", train_step, train_batch), ("infer", infer_step, infer_batch)):
                t0 = time.perf_counter()
                for _ in range(1 if r == 0 else steps):
                    fn(method, optimizer, prec)
                if r:
                    samples.setdefault((name, precision, kind), []).append(batch * steps / (time.perf_counter() - t0))
        print(f"round {r}/{rounds} done", flush=True)
    ref = {k: statistics.median(samples[("resnet50", "fp32", k)]) for k in ("train", "infer")} \
        if ("resnet50", "fp32", "train") in samples else None
    out = []
    for (name, precision, kind), v in samples.items():
        med = statistics.median(v)
        out.append({"backbone": name, "precision": precision, "kind": kind, "images_per_s": round(med, 2),
                    "spread": [round(min(v), 2), round(max(v), 2)],
                    "vs_resnet50_fp32": round(med / ref[kind], 3) if ref else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["quality", "throughput"], default="quality")
    ap.add_argument("--out", default=None, help="throughput: write the results (JSON) here")
    ap.add_argument("--rounds", type=int, default=3, help="throughput: interleaved rounds (median reported)")
    ap.add_argument("--train-batch", type=int, default=16, help="throughput: images per training step")
    ap.add_argument("--infer-batch", type=int, default=32, help="throughput: images per inference call")
    ap.add_argument("--calls", type=int, default=2, help="throughput: steps / calls per configuration and round")
    ap.add_argument("--root", default="data/01_raw/glyphs")
    ap.add_argument("--method", default="margin")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--embedding-dim", type=int, default=128, help="0: no head (the backbone's pooled feature)")
    ap.add_argument("--save", default=None, help="quality: write each trained model file (model.pt format) here, "
                    "e.g. for benchmarks/export/run.py --model")
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0:pretrained"],
                    help=f"<name>[:pretrained], name one of {', '.join(BACKBONES.names())} (the README's comparison by "
                         "default)")
    args = ap.parse_args()
    if args.mode == "throughput":
        from deepmetric.training.precision import cpu_has_native_bf16

        rows = throughput(THROUGHPUT, ("fp32", "bf16"), 224, args.train_batch, args.infer_batch, args.rounds,
                          args.calls)
        result = {"size": 224, "train_batch": args.train_batch, "infer_batch": args.infer_batch,
                  "rounds": args.rounds, "calls_per_round": args.calls,
                  "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                  "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
                  "load_avg_end": os.getloadavg(), "rows": rows}
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))
        print("\n| backbone | precision | train img/s | × ResNet-50 fp32 | inference img/s | × ResNet-50 fp32 |")
        print("|---|---|---|---|---|---|")
        by = {(r["backbone"], r["precision"], r["kind"]): r for r in rows}
        for name in THROUGHPUT:
            for precision in ("fp32", "bf16"):
                t, i = by[(name, precision, "train")], by[(name, precision, "infer")]
                print(f"| {name} | {precision} | {t['images_per_s']:.1f} | {t['vs_resnet50_fp32']:.2f} | "
                      f"{i['images_per_s']:.1f} | {i['vs_resnet50_fp32']:.2f} |")
        return
    try:
        for item in args.backbones:
            BACKBONES.check(item.partition(":")[0], what="--backbones entry")
    except UnknownNameError as exc:
        ap.error(str(exc))
    logging.basicConfig(level=logging.WARNING)
    manifest, _ = ingest({"dataset": "glyphs", "root": args.root})
    spec = InputConfig(resize=args.size, crop=args.size)
    rows = []
    for item in args.backbones:
        name, _, flag = item.partition(":")
        cfg, params = parse_train({
            "method": args.method, "epochs": args.epochs, "steps_per_epoch": args.steps, "progress": False,
            "backbone": {"name": name, "pretrained": flag == "pretrained"},
            "embedding_dim": args.embedding_dim or None,
        })
        t0 = time.perf_counter()
        res = fit(manifest, args.root, cfg, params, spec)
        train_s = time.perf_counter() - t0
        method, _ = load_model(res.payload)
        if args.save:
            Path(args.save).mkdir(parents=True, exist_ok=True)
            torch.save(res.payload, Path(args.save) / f"{name.replace('/', '_')}.pt")
        seed_everything(init_seed(cfg.seed))
        start = build_method(cfg, params, res.payload["num_classes"]).eval()
        metrics, base, _ = evaluate_model(method, start, "start", manifest, args.root, "glyphs", spec,
                                          EvaluateConfig(progress=False))
        ips = sum(r["images_per_s"] for r in res.log) / len(res.log)
        rows.append((item, base["start"], metrics, ips, train_s))
        print(item, {k: round(v, 4) for k, v in metrics.items()}, f"{ips:.1f} img/s", flush=True)
    print(f"\n| backbone | steps | MAP@R start | MAP@R trained | R@1 trained | NMI trained | train img/s |")
    print("|---|---|---|---|---|---|---|")
    for item, s, m, ips, _ in rows:
        print(f"| {item} | {args.epochs * args.steps} | {100 * s['map@r']:.1f} | {100 * m['map@r']:.1f} | "
              f"{100 * m['recall@1']:.1f} | {100 * m['nmi']:.1f} | {ips:.0f} |")
    print(f"pixels: {base['pixels']}")


if __name__ == "__main__":
    main()
