"""Benchmark: data-parallel training steps with 1 vs N processes (gloo on CPU, NCCL on GPUs), and their equivalence.

    python benchmarks/distributed/run.py                       # this machine (CPU): 1 vs 2 gloo processes
    python benchmarks/distributed/run.py --fit                 # the whole training loop on the glyph set
    python benchmarks/distributed/run.py --device cuda --nprocs 1 2 4 8 --backbone resnet50 --size 224 \\
        --precision bf16 --classes-per-batch 16 --samples-per-class 4 --weak --repeats 3 \\
        --out benchmarks/distributed/results_gpu_weak.json      # 64 images per GPU; without --weak: 64 in all

Every configuration runs the same global batch (P classes × K images, synthetic images, identical on every rank)
through the real pieces of `deepmetric.training.distributed`: each rank takes its share (`Distributed.share`),
the method's `training_step` gathers the embeddings (`Distributed.gather`), gradients are averaged by the
bucketed, overlapped `GradientSync`. Reported per configuration (median of ``--repeats`` interleaved runs):
step time, global images/s, scaling efficiency against one process, and the communication alone (all-gather of
the batch's embeddings and labels, all-reduce of all gradients) measured in the same processes. Equivalence:
the loss curve and the final parameters of N processes against one (backbone BatchNorm frozen so the
comparison is exact up to float rounding; see `tests/training/test_distributed.py`).

On CPU, "1 process × T threads" vs "N processes × T threads" is the analogue of 1 vs N GPUs (each process has
its own cores); "1 process × N·T threads" is the same machine used by one process.

``--fit`` measures the whole training loop instead (data loading, augmentation, validation, checkpoints) on the
rendered glyph set, launched exactly as the train stage launches it (`deepmetric.training.launch.launch`, torchrun
with N processes, the machine's cores shared out), and compares the images/s of the training epochs and the
validation MAP@R reached (BatchNorm trainable here: per-rank statistics, so equal quality, not equal numbers).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # a torchrun rank: write results here
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--method", default="margin")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes-per-batch", type=int, default=16)
    p.add_argument("--samples-per-class", type=int, default=4)
    p.add_argument("--embedding-dim", type=int, default=128)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--weak", action="store_true",
                   help="grow the global batch with the processes (classes per batch × N; per-process batch fixed)")
    p.add_argument("--fit", action="store_true", help="the whole training loop on the glyph set (see docstring)")
    p.add_argument("--epochs", type=int, default=4, help="--fit: epochs (the first is not timed)")
    p.add_argument("--glyph-classes", type=int, default=100, help="--fit: classes of the rendered glyph set")
    p.add_argument("--fit-threads", type=int, default=0,
                   help="--fit: torch threads per process (0: the stage's default, the cores shared out)")
    p.add_argument("--out", type=Path, default=None, help="default: results.json (results_fit.json with --fit)")
    return p.parse_args(argv)


# --- one rank ------------------------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    from deepmetric.training.config import parse_train
    from deepmetric.training.distributed import Distributed
    from deepmetric.training.model_io import build_method

    torch.set_num_threads(args.threads)
    dist = Distributed.from_env(device=args.device)
    dev = dist.device if args.device == "cuda" else torch.device("cpu")
    cfg, params = parse_train({
        "method": args.method, "embedding_dim": args.embedding_dim,
        "batch": {"classes_per_batch": args.classes_per_batch, "samples_per_class": args.samples_per_class},
        "backbone": {"name": args.backbone, "frozen_bn": True},
    })
    torch.manual_seed(0)
    method = build_method(cfg, params, args.num_classes).to(dev).train()
    groups = [g for g in method.param_groups(0.01, 0.0) if g["params"]]
    optimizer = torch.optim.SGD(groups, lr=0.01)
    sync = dist.gradient_sync(method.parameters())
    n_params = sum(p.numel() for p in method.parameters() if p.requires_grad)
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())

    class Ctx:
        device, epoch, epochs, seed = dev, 0, 1, 0
        step = 0

        @staticmethod
        def gather(*t):
            return dist.gather(*t)

        @staticmethod
        def optimizer_step(loss):
            optimizer.zero_grad(set_to_none=True)
            with sync or contextlib.nullcontext():
                loss.backward()
            optimizer.step()

    def synchronize() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    batch = cfg.batch.size
    losses, times = [], []
    for step in range(args.warmup + args.steps):
        g = torch.Generator().manual_seed(step)
        images = torch.randn(batch, 3, args.size, args.size, generator=g)
        labels = torch.randperm(args.num_classes, generator=g)[: args.classes_per_batch]
        labels = labels.repeat_interleave(args.samples_per_class)
        mine = dist.share(range(batch))
        x, y = images[mine].to(dev), labels[mine].to(dev)
        dist.begin_step(0, 0, step)
        Ctx.step = step
        synchronize()
        t0 = time.perf_counter()
        with autocast:
            stats = method.training_step(x, y, Ctx)
        synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
        losses.append(stats["loss"])

    comm = {}
    if dist.enabled:  # the communication alone, in the same processes
        emb = torch.randn(batch // dist.world_size, args.embedding_dim, device=dev, requires_grad=True)
        lab = torch.zeros(batch // dist.world_size, dtype=torch.long, device=dev)
        flat = torch.zeros(n_params, device=dev)
        import torch.distributed as tdist

        for what, fn in (("all_gather_ms", lambda: dist.gather(emb, lab)),
                         ("all_reduce_grads_ms", lambda: tdist.all_reduce(flat))):
            for _ in range(3):
                fn()
            synchronize()
            reps = []
            for _ in range(20):
                t0 = time.perf_counter()
                fn()
                synchronize()
                reps.append(1000 * (time.perf_counter() - t0))
            comm[what] = round(statistics.median(reps), 3)
    if dist.is_main:
        step_s = statistics.median(times)
        out = {
            "nproc": dist.world_size, "threads": args.threads, "backend": dist.backend or "none",
            "step_ms": round(1000 * step_s, 2), "images_per_s": round(batch / step_s, 1),
            "losses": losses, "params": n_params, **comm,
        }
        args.worker.write_text(json.dumps(out))
        torch.save({k: v.detach().cpu() for k, v in method.state_dict().items()}, args.worker.with_suffix(".pt"))
    dist.close()


# --- driver ----------------------------------------------------------------------------------------------------
def launch(args: argparse.Namespace, nproc: int, threads: int, out: Path) -> dict:
    classes = args.classes_per_batch * (nproc if args.weak else 1)
    opts = ["--device", args.device, "--threads", str(threads), "--method", args.method, "--backbone", args.backbone,
            "--size", str(args.size), "--classes-per-batch", str(classes),
            "--samples-per-class", str(args.samples_per_class), "--embedding-dim", str(args.embedding_dim),
            "--num-classes", str(max(args.num_classes, classes)), "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--precision", args.precision, "--worker", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(Path(__file__).resolve()), *opts]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def fit_benchmark(args: argparse.Namespace) -> None:
    import torch

    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.launch import launch

    sys.path.insert(0, str(HERE.parent / "methods"))
    from run import make_dataset  # the glyph set of benchmarks/methods

    data = Path(tempfile.mkdtemp(prefix="bench-dist-")) / "glyphs"
    manifest = make_dataset(data, args.glyph_classes, args.size)
    classes = sorted(manifest.loc[manifest["split"] == "train", "label"].unique())
    val = set(classes[-max(2, len(classes) // 10):])  # validation on the last 10 % of the training classes
    manifest.loc[manifest["label"].isin(val), "split"] = "val"
    spec = InputConfig(resize=args.size, crop=args.size)
    if args.fit_threads:
        os.environ["OMP_NUM_THREADS"] = str(args.fit_threads)  # the launcher keeps a value the user set
    runs: dict[int, list[dict]] = {n: [] for n in args.nprocs}
    for r in range(args.repeats):
        for n in args.nprocs:
            cfg, _ = parse_train({
                "method": args.method, "epochs": args.epochs, "steps_per_epoch": args.steps,
                "embedding_dim": args.embedding_dim, "progress": False, "device": args.device,
                "batch": {"classes_per_batch": args.classes_per_batch, "samples_per_class": args.samples_per_class},
                "backbone": {"name": args.backbone}, "distributed": {"nproc_per_node": n},
            })
            t0 = time.perf_counter()
            res = launch(manifest, str(data), cfg, spec)
            wall = time.perf_counter() - t0
            timed = res.log[1:] or res.log
            ips = statistics.median(row["images_per_s"] for row in timed)
            runs[n].append({"images_per_s": ips, "wall_s": round(wall, 1), "loss": [row["loss"] for row in res.log],
                            "val_map@r": [row.get("val_map@r") for row in res.log]})
            print(f"repeat {r + 1}/{args.repeats}: {n} process(es): {ips} images/s, {wall:.0f} s, "
                  f"val MAP@R {runs[n][-1]['val_map@r'][-1]}", flush=True)
    base = statistics.median(x["images_per_s"] for x in runs[min(args.nprocs)])
    rows = []
    for n, rs in runs.items():
        ips = statistics.median(x["images_per_s"] for x in rs)
        rows.append({"nproc": n, "images_per_s": ips, "images_per_s_runs": [x["images_per_s"] for x in rs],
                     "speedup": round(ips / base, 3), "wall_s": statistics.median(x["wall_s"] for x in rs),
                     "final_val_map@r": [x["val_map@r"][-1] for x in rs], "final_loss": [x["loss"][-1] for x in rs]})
    result = {"machine": {"cores": os.cpu_count(), "torch": torch.__version__, "load_avg_at_end": os.getloadavg()},
              "setup": {k: v for k, v in vars(args).items() if k not in ("worker", "out")}, "rows": rows}
    out = args.out or HERE / (f"results_fit_{args.fit_threads}thread.json" if args.fit_threads else "results_fit.json")
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for row in rows:
        print(json.dumps(row))


def main(argv=None) -> None:
    args = _args(argv)
    if args.worker:
        worker(args)
        return
    if args.fit:
        fit_benchmark(args)
        return
    args.out = args.out or HERE / "results.json"
    import torch

    configs = [(n, args.threads) for n in args.nprocs]
    if args.device == "cpu" and 1 in args.nprocs and max(args.nprocs) > 1:
        configs.append((1, args.threads * max(args.nprocs)))  # one process on all the cores
    runs: dict[str, list[dict]] = {f"{n}x{t}": [] for n, t in configs}
    states: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):  # interleaved, so a busy machine slows every configuration alike
            for n, t in configs:
                out = Path(tmp) / f"{n}x{t}_{r}.json"
                runs[f"{n}x{t}"].append(launch(args, n, t, out))
                states.setdefault(f"{n}x{t}", torch.load(out.with_suffix(".pt")))
                print(f"repeat {r + 1}/{args.repeats}: {n} proc × {t} thread(s): {runs[f'{n}x{t}'][-1]['step_ms']} ms",
                      flush=True)
    base = f"1x{args.threads}"
    rows = []
    for key, rs in runs.items():
        n, t = map(int, key.split("x"))
        step = statistics.median(r["step_ms"] for r in rs)
        ips = statistics.median(r["images_per_s"] for r in rs)
        row = {"config": f"{n} process(es) × {t} thread(s)", "nproc": n, "threads": t, "step_ms": step,
               "images_per_s": ips, "step_ms_runs": [r["step_ms"] for r in rs]}
        if base in runs:
            b = statistics.median(r["images_per_s"] for r in runs[base])
            row["speedup_vs_1_process"] = round(ips / b, 3)
            row["scaling_efficiency"] = round(ips / (b * n), 3) if t == args.threads else None
        for k in ("all_gather_ms", "all_reduce_grads_ms"):
            if k in rs[0]:
                row[k] = statistics.median(r[k] for r in rs)
                row[k.replace("_ms", "_share_of_step")] = round(row[k] / step, 4)
        if base in runs and key != base and not args.weak:
            a, b = runs[base][0]["losses"], rs[0]["losses"]
            sa, sb = states[base], states[key]
            row["max_loss_diff_vs_1_process"] = max(abs(x - y) for x, y in zip(a, b, strict=True))
            row["max_param_diff_vs_1_process"] = max(float((sa[k] - sb[k]).abs().max()) for k in sa
                                                     if sa[k].is_floating_point() and sa[k].numel())
        rows.append(row)
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                    "load_avg_at_end": os.getloadavg()},
        "setup": {k: v for k, v in vars(args).items() if k not in ("worker", "out")},
        "params": runs[base][0]["params"] if base in runs else None,
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "step_ms_runs"}))


if __name__ == "__main__":
    main()
