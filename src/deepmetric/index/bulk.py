"""Embed many image files with an exported model, offline: ``deepmetric embed`` and ``deepmetric search`` over a
folder or a table.

The index stage's embedding code does the work (`deepmetric.index.embedder`: one onnxruntime session per worker
process, batches through the one evaluation transform, each image cut to its box): the images still to do are
cut into contiguous, batch-aligned shards, run serially or in ``processes`` spawned workers, with a progress bar.
Every finished shard is written at once to a part file next to the output (``<out>.partial/part-*.parquet``), so
an interrupted run loses at most the shards in flight; a rerun skips every path the output or its parts already
hold, and the parts are merged into the output (written atomically) at the end.

Output table (Parquet): ``id`` (int64, in output order; a resumed run continues the numbering), ``path``, ``label``
(text as the folder or table gives it, null when unknown), ``class_name`` (when the table has it), ``embedding``
(fixed-size list of float32, L2-normalised).
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from deepmetric.data.contract import boxes_of
from deepmetric.data.images import ImageLimits
from deepmetric.io.atomic import atomic_path
from deepmetric.parallel import batch_shards
from deepmetric.runtime import resolve_processes, threads_per_worker

__all__ = ["EMBEDDING_COLUMNS", "embed_items", "embedding_matrix", "read_embeddings"]

#: Columns of the output table, in order (``class_name`` only when the input has it).
EMBEDDING_COLUMNS = ("id", "path", "label", "class_name", "embedding")
_SHARD_BATCHES = 4


def _partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def read_embeddings(path: str | os.PathLike[str]) -> pd.DataFrame:
    """An embeddings table written by :func:`embed_items` (empty when ``path`` does not exist)."""
    path = Path(path)
    if not path.exists():
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "id" else object) for c in EMBEDDING_COLUMNS})
    return pd.read_parquet(path)


def embedding_matrix(table: pd.DataFrame) -> np.ndarray:
    """The ``embedding`` column as a ``float32 [N, dim]`` array."""
    if table.empty:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(table["embedding"].to_numpy()).astype(np.float32, copy=False)


def _write(table: pd.DataFrame, emb: np.ndarray, dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {c: pa.array(table[c].tolist(), type=pa.int64()) if c == "id"
            else pa.array([None if pd.isna(v) else str(v) for v in table[c]], type=pa.string())
            for c in EMBEDDING_COLUMNS[:-1] if c in table}
    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1))
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, int(emb.shape[1]) if emb.ndim == 2 else 0)
    with atomic_path(dest) as tmp:
        pq.write_table(pa.table(cols), tmp)


def _shards(n: int, batch_size: int, processes: int) -> list[tuple[int, int]]:
    """Batch-aligned [start, stop) ranges of about ``_SHARD_BATCHES`` batches (at least 4 per process)."""
    per = max(1, min(_SHARD_BATCHES, -(-n // (batch_size * max(1, 4 * processes)))))
    return batch_shards(n, batch_size, max(1, -(-n // (batch_size * per))))


def _run(onnx_bytes: bytes, root: str, paths: list[str], boxes, limits: ImageLimits, batch_size: int,
         processes: int, threads: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, embeddings)`` per finished shard of ``paths`` (in completion order)."""
    from deepmetric.index.embedder import embed_shard, init_shard_worker

    shards = _shards(len(paths), batch_size, processes)
    initargs = (onnx_bytes, threads, root, paths, limits, batch_size, boxes)
    if processes == 1:
        init_shard_worker(*initargs)
        for start, stop in shards:
            yield start, stop, embed_shard(start, stop)
        return
    import multiprocessing

    pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_shard_worker, initargs=initargs)
    try:
        futures = {pool.submit(embed_shard, start, stop): (start, stop) for start, stop in shards}
        for fut in as_completed(futures):
            start, stop = futures[fut]
            yield start, stop, fut.result()
    finally:  # on an error or an interrupt, the shards not started yet are dropped, not waited for
        pool.shutdown(wait=True, cancel_futures=True)


def embed_items(
    onnx_bytes: bytes,
    items: pd.DataFrame,
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    processes: int = 1,
    threads: int = 0,
    limits: ImageLimits = ImageLimits(),
    progress: bool | None = None,
    on_shard: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Embed the images of ``items`` (``path`` relative to ``root``; ``label``, ``class_name``, a box optional)
    that ``out`` does not hold yet, append them to ``out`` and return the whole table. ``processes``: worker
    processes (0: one per core), each with ``threads`` onnxruntime threads (0: its share of the cores).
    ``on_shard(n)`` is called after each shard is saved (n images)."""
    from tqdm.auto import tqdm

    out = Path(out)
    partial = _partial(out)
    done = read_embeddings(out)
    parts = sorted(partial.glob("part-*.parquet")) if partial.is_dir() else []
    held = set(done["path"]) | {p for part in parts for p in pd.read_parquet(part, columns=["path"])["path"]}
    todo = items[~items["path"].isin(held)].reset_index(drop=True)
    processes = resolve_processes(processes)
    if len(todo) <= batch_size:
        processes = 1
    threads = threads or threads_per_worker(processes)
    if progress is None:
        progress = not os.environ.get("DEEPMETRIC_NO_PROGRESS")
    extra = [c for c in ("label", "class_name") if c in todo]
    if len(todo):
        partial.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc="embedding images", unit="img",
                   disable=not progress, file=sys.stderr, mininterval=0.5, smoothing=0.1)
        try:
            for start, stop, emb in _run(onnx_bytes, str(root), todo["path"].astype(str).tolist(), boxes_of(todo),
                                         limits, batch_size, processes, threads):
                rows = todo.iloc[start:stop][["path", *extra]].assign(id=np.arange(start, stop))
                _write(rows, emb, partial / f"part-{uuid.uuid4().hex[:12]}.parquet")
                bar.update(stop - start)
                if on_shard is not None:
                    on_shard(stop - start)
        finally:
            bar.close()
        parts = sorted(partial.glob("part-*.parquet"))
    if not parts:
        return done
    order = {p: i for i, p in enumerate(items["path"])}
    new = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    new = new.assign(_o=new["path"].map(order)).sort_values("_o", kind="stable").drop(columns="_o")
    table = pd.concat([done, new], ignore_index=True) if len(done) else new.reset_index(drop=True)
    table["id"] = np.arange(len(table), dtype=np.int64)
    table = table[[c for c in EMBEDDING_COLUMNS if c in table]]
    _write(table.drop(columns="embedding"), embedding_matrix(table), out)
    shutil.rmtree(partial, ignore_errors=True)
    return read_embeddings(out)
