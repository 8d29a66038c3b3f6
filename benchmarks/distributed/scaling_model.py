"""A scaling model for data-parallel DML training on N GPUs: when does communication cost more than 10 % of a step?

    python benchmarks/distributed/scaling_model.py                  # the scenarios of README.md
    python benchmarks/distributed/scaling_model.py --params 25.6e6 --embedding-dim 512 --per-gpu-batch 64 \\
        --ms-per-image 0.35 --overhead-ms 4 --busbw-gbs 350 --latency-us 8

Per step, each of N ranks (one per GPU):
- computes its b images: ``t_c(b) = overhead + b × ms_per_image`` (forward + backward + optimiser step; from
  ``benchmarks/training`` or this folder's ``run.py`` on the target GPU),
- all-gathers the batch's embeddings and labels: ``(N−1)/N × N·b × (4·D + 8)`` bytes received per rank,
- all-reduces every gradient (ring): ``2 (N−1)/N × 4·P`` bytes sent and received per rank,
  in buckets that start during backward: all but the last bucket (25 MB) hide behind the remaining backward
  compute (backward ≈ ``backward_share`` of ``t_c``); what does not fit is exposed.
A collective of ``s`` bytes takes ``s / busbw + steps × latency`` (NCCL's bus bandwidth; ring steps 2(N−1) for
all-reduce, N−1 for all-gather). Efficiency = compute / (compute + exposed communication); for a fixed global
batch B (strong scaling) also divided by the per-image speed lost at b = B/N (``overhead`` amortised over fewer
images).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

BUCKET_BYTES = 25 * 2**20


@dataclass
class Setup:
    name: str
    params: float  # trainable parameters (fp32 gradients)
    embedding_dim: int
    ms_per_image: float
    overhead_ms: float
    busbw_gbs: float  # NCCL bus bandwidth between the N devices, GB/s
    latency_us: float
    backward_share: float = 0.6


def step(s: Setup, n: int, per_gpu_batch: int) -> dict[str, float]:
    compute = s.overhead_ms + per_gpu_batch * s.ms_per_image
    grad_bytes = 4 * s.params
    if n == 1:
        return {"n": 1, "compute_ms": compute, "gather_ms": 0.0, "allreduce_ms": 0.0, "exposed_ms": 0.0,
                "comm_share": 0.0, "efficiency": 1.0, "gather_kb": 0.0, "allreduce_mb": 0.0}
    bw = s.busbw_gbs * 1e9 / 1e3  # bytes per ms
    lat = s.latency_us / 1e3
    gather_bytes = (n - 1) / n * n * per_gpu_batch * (4 * s.embedding_dim + 8)
    gather = gather_bytes / bw + (n - 1) * lat
    ring = 2 * (n - 1) / n
    allreduce = ring * grad_bytes / bw + 2 * (n - 1) * lat * max(1.0, grad_bytes / BUCKET_BYTES)
    last_bucket = ring * min(grad_bytes, BUCKET_BYTES) / bw + 2 * (n - 1) * lat
    hidden = min(allreduce - last_bucket, s.backward_share * compute)
    exposed = gather + allreduce - hidden
    return {"n": n, "compute_ms": compute, "gather_ms": gather, "allreduce_ms": allreduce, "exposed_ms": exposed,
            "comm_share": exposed / (compute + exposed), "efficiency": compute / (compute + exposed),
            "gather_kb": gather_bytes / 1e3, "allreduce_mb": ring * grad_bytes / 1e6}


def strong(s: Setup, n: int, global_batch: int) -> dict[str, float]:
    """Fixed global batch: b = B / N per GPU; efficiency against one GPU doing all B."""
    b = global_batch // n
    r = step(s, n, b)
    one = step(s, 1, global_batch)["compute_ms"]
    r["efficiency"] = one / (n * (r["compute_ms"] + r["exposed_ms"]))
    return r


def ten_percent_batch(s: Setup, n: int) -> int | None:
    """Smallest per-GPU batch at which exposed communication is ≤ 10 % of the step."""
    for b in range(1, 4097):
        if step(s, n, b)["comm_share"] <= 0.10:
            return b
    return None


def global_batch_for(s: Setup, n: int, efficiency: float = 0.9) -> int | None:
    """Smallest global batch (a multiple of n) whose strong-scaling efficiency on n GPUs reaches ``efficiency``."""
    for b in range(n, 65537, n):
        if strong(s, n, b)["efficiency"] >= efficiency:
            return b
    return None


def table(s: Setup, per_gpu_batch: int, global_batch: int | None, ns=(1, 2, 4, 8)) -> str:
    lines = [f"**{s.name}** — P = {s.params / 1e6:.1f} M, D = {s.embedding_dim}, {s.ms_per_image} ms/image + "
             f"{s.overhead_ms} ms/step, bus bandwidth {s.busbw_gbs} GB/s, latency {s.latency_us} µs", "",
             "| GPUs | per-GPU batch | compute ms | all-gather (KB, ms) | grad all-reduce (MB, ms) | exposed ms | "
             "comm share | efficiency (fixed per-GPU batch) |" + (" efficiency (fixed global batch "
             f"{global_batch}) |" if global_batch else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if global_batch else "")]
    for n in ns:
        r = step(s, n, per_gpu_batch)
        line = (f"| {n} | {per_gpu_batch} | {r['compute_ms']:.1f} | {r['gather_kb']:.0f}, {r['gather_ms']:.3f} | "
                f"{r['allreduce_mb']:.0f}, {r['allreduce_ms']:.2f} | {r['exposed_ms']:.2f} | "
                f"{100 * r['comm_share']:.1f} % | {100 * r['efficiency']:.1f} % |")
        if global_batch:
            line += f" {100 * strong(s, n, global_batch)['efficiency']:.1f} % |"
        lines.append(line)
    n = max(ns)
    b10 = ten_percent_batch(s, n)
    g90 = global_batch_for(s, n)
    lines += ["", (f"Communication ≤ 10 % of the step on {n} GPUs from a per-GPU batch of {b10} image(s)"
                   if b10 else f"Communication stays above 10 % on {n} GPUs at any per-GPU batch up to 4096")
              + (f"; a fixed global batch scales 1 → {n} GPUs at ≥ 90 % from {g90} images." if g90 else
                 f"; no fixed global batch up to 65536 scales 1 → {n} GPUs at ≥ 90 %.")]
    return "\n".join(lines)


# Scenarios of README.md. Compute: ResNet-50 at 224 px on one H100 with bf16 + channels_last, 3,600 img/s at batch
# 112 and 3,964 at batch 256 (the reference figures quoted in benchmarks/training/README.md) → 5.05 ms + 0.233 ms
# per image; with torch.compile 5,591 img/s → 0.179 ms per image (overhead kept at 5 ms). Link bandwidths are
# typical NCCL bus bandwidths, not measured here: NVLink/NVSwitch (H100 SXM) 350 GB/s, PCIe 4.0 without NVLink
# 20 GB/s, 100 Gb/s between machines 10 GB/s. Gradients are float32 (autocast leaves the parameters in fp32).
R50 = 25.6e6 + 2048 * 512  # ResNet-50 trunk + a 512-d embedding head
SCENARIOS = [
    (Setup("ResNet-50, 224 px, bf16 + channels_last + compile, 8 H100 on NVLink/NVSwitch", R50, 512,
           ms_per_image=0.179, overhead_ms=5.0, busbw_gbs=350, latency_us=8), 64, 256),
    (Setup("ResNet-50, 224 px, bf16 + channels_last + compile, 8 GPUs on PCIe 4.0 (no NVLink)", R50, 512,
           ms_per_image=0.179, overhead_ms=5.0, busbw_gbs=20, latency_us=15), 64, 256),
    (Setup("ResNet-50, 224 px, bf16 + channels_last + compile, 2 machines × 4 GPUs over 100 Gb/s", R50, 512,
           ms_per_image=0.179, overhead_ms=5.0, busbw_gbs=10, latency_us=30), 64, 256),
    (Setup("ResNet-50, 224 px, bf16 + channels_last (no compile), 2 machines × 4 GPUs over 100 Gb/s", R50, 512,
           ms_per_image=0.233, overhead_ms=5.05, busbw_gbs=10, latency_us=30), 64, 256),
]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--params", type=float)
    p.add_argument("--embedding-dim", type=int, default=512)
    p.add_argument("--per-gpu-batch", type=int, default=64)
    p.add_argument("--global-batch", type=int)
    p.add_argument("--ms-per-image", type=float, default=0.35)
    p.add_argument("--overhead-ms", type=float, default=4.0)
    p.add_argument("--busbw-gbs", type=float, default=350)
    p.add_argument("--latency-us", type=float, default=8)
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    a = p.parse_args(argv)
    if a.params is None:
        for s, b, g in SCENARIOS:
            print(table(s, b, g, a.gpus) + "\n")
        return
    s = Setup("custom", a.params, a.embedding_dim, a.ms_per_image, a.overhead_ms, a.busbw_gbs, a.latency_us)
    print(table(s, a.per_gpu_batch, a.global_batch, a.gpus))


if __name__ == "__main__":
    main()
