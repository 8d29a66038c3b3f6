"""Which backbone for the built-in glyph set? Same method, batch, steps and embedding size; zero-shot MAP@R.

    .venv/bin/python benchmarks/backbones/run.py --root data/01_raw/glyphs --epochs 4 --steps 40 \
        --backbones resnet18 efficientnet_lite0:pretrained resnet18:pretrained-free

Prints a Markdown table (MAP@R on the test classes, Recall@1, NMI, training images/s) to paste into
benchmarks/backbones/README.md. The untrained / pretrained-only network of each is scored too.
"""

from __future__ import annotations

import argparse
import logging
import time

from deepmetric.evaluation.protocol import EvaluateConfig, evaluate_model
from deepmetric.models.backbones import BACKBONES
from deepmetric.registry import UnknownNameError
from deepmetric.runtime import init_seed, seed_everything
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.loop import fit
from deepmetric.training.model_io import build_method, load_model
from pipelines.ingest.nodes import ingest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="data/01_raw/glyphs")
    ap.add_argument("--method", default="margin")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "efficientnet_lite0:pretrained"],
                    help=f"<name>[:pretrained], name one of {', '.join(BACKBONES.names())} (the README's comparison by "
                         "default)")
    args = ap.parse_args()
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
        })
        t0 = time.perf_counter()
        res = fit(manifest, args.root, cfg, params, spec)
        train_s = time.perf_counter() - t0
        method, _ = load_model(res.payload)
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
