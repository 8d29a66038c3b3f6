"""Contiguous shards of a long list, run in worker processes and concatenated back in order.

Embedding a gallery of 10^6 images is a parallel job: the index stage (onnxruntime) and evaluation (PyTorch)
split the manifest rows into contiguous shards cut on batch boundaries, so every batch is exactly a batch of
the serial path, run the shards in ``spawn``-ed worker processes (each with its share of the cores), and
concatenate the results in manifest order. Training ranks use the same `shard_bounds`
(`deepmetric.training.distributed.Distributed.embed_shards`). How many processes: `deepmetric.runtime`.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np


def shard_bounds(n: int, shards: int, index: int) -> tuple[int, int]:
    """[start, stop) of the ``index``-th of ``shards`` contiguous shards of ``n`` items (sizes differ by ≤ 1)."""
    if shards < 1 or not 0 <= index < shards:
        raise ValueError(f"shard {index} of {shards}")
    base, extra = divmod(n, shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def batch_shards(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """Non-empty contiguous [start, stop) ranges covering ``n`` items, cut on multiples of ``batch_size``."""
    n_batches = math.ceil(n / batch_size)
    out = []
    for s in range(shards):
        b0, b1 = shard_bounds(n_batches, shards, s)
        if b1 > b0:
            out.append((b0 * batch_size, min(b1 * batch_size, n)))
    return out


def run_sharded(
    task: Callable[[int, int], np.ndarray],
    n: int,
    batch_size: int,
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: Sequence[Any] = (),
    shards_per_worker: int = 4,
) -> np.ndarray:
    """``task(start, stop)`` over batch-aligned shards of ``n`` items in ``workers`` spawned processes
    (``initializer(*initargs)`` once in each), concatenated in order. ``task`` and ``initializer`` must be
    importable module-level functions."""
    shards = batch_shards(n, batch_size, workers * shards_per_worker)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=initializer,
                             initargs=tuple(initargs)) as pool:
        parts = list(pool.map(task, [s for s, _ in shards], [e for _, e in shards]))
    parts = [p for p in parts if len(p)]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
