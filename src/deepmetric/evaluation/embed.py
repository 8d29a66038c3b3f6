"""Embed every image of a dataset with a function of uint8 batches, in order, without gradients.

``processes > 1`` embeds contiguous, batch-aligned shards of the dataset in that many worker processes and
concatenates them in order (`deepmetric.parallel`): every batch is a batch of the serial path, so the result is
the serial one. The embedding function and the dataset travel to the workers pickled (`MethodEmbedder` and
`PixelEmbedder` are picklable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepmetric.errors import reraise_worker_errors
from deepmetric.parallel import run_sharded
from deepmetric.runtime import resolve_processes, threads_per_worker


@torch.no_grad()
def embed_dataset(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: torch.utils.data.Dataset,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    processes: int = 1,
) -> np.ndarray:
    """``fn`` takes a uint8 NCHW batch on ``device`` and returns ``[N, D]``; the result is float32 numpy.

    ``processes`` (0: one per core) > 1 splits the work over worker processes (see the module docstring)."""
    processes = resolve_processes(processes)
    if processes > 1 and len(dataset) > batch_size:
        return run_sharded(
            _embed_range, len(dataset), batch_size, processes, initializer=_init_worker,
            initargs=(fn, dataset, batch_size, torch.device(device).type, num_workers, threads_per_worker(processes)),
        )
    kwargs = {"multiprocessing_context": "fork"} if num_workers > 0 and _can_fork() else {}
    # Its own generator: an embedding pass must not consume the global RNG of a training run.
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         generator=torch.Generator(), **kwargs)
    out = []
    for batch in tqdm(reraise_worker_errors(loader), total=len(loader), desc=desc, disable=not progress,
                      leave=False):
        out.append(fn(batch.to(device)).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def _can_fork() -> bool:
    import multiprocessing as mp

    return "fork" in mp.get_all_start_methods()


# --- worker processes of the sharded path ---------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(fn, dataset, batch_size: int, device_type: str, num_workers: int, threads: int) -> None:
    import multiprocessing

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    if device_type == "cuda" and torch.cuda.is_available():
        identity = multiprocessing.current_process()._identity  # 1-based worker number in the pool
        device = torch.device("cuda", ((identity[0] - 1) if identity else 0) % torch.cuda.device_count())
    if isinstance(fn, torch.nn.Module) or hasattr(fn, "to"):
        fn = fn.to(device)
    _WORKER.update(fn=fn, dataset=dataset, batch_size=batch_size, device=device, num_workers=num_workers)


def _embed_range(start: int, stop: int) -> np.ndarray:
    w = _WORKER
    subset = torch.utils.data.Subset(w["dataset"], range(start, stop))
    return embed_dataset(w["fn"], subset, w["batch_size"], w["device"], w["num_workers"])


# --- embedding functions --------------------------------------------------------------------------------------
class MethodEmbedder:
    """uint8 batch → the method's test embedding (normalised), in eval mode. Picklable."""

    def __init__(self, method: torch.nn.Module, mean, std) -> None:
        self.method, self.mean, self.std = method, mean, std

    def to(self, device: torch.device) -> MethodEmbedder:
        self.method = self.method.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from deepmetric.models.preprocess import to_model_input

        was_training = self.method.training
        self.method.eval()
        try:
            return self.method.embed(to_model_input(x, self.mean, self.std))
        finally:
            self.method.train(was_training)


def method_embedder(method: torch.nn.Module, mean, std) -> MethodEmbedder:
    """uint8 batch → the method's test embedding (normalised), in eval mode."""
    return MethodEmbedder(method, mean, std)


class PixelEmbedder:
    """The raw-pixel baseline: (optionally downsample to ``size``²,) flatten, centre, L2-normalise. Picklable."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        x = x.float() / 255.0
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        v = x.flatten(1)
        return F.normalize(v - v.mean(dim=1, keepdim=True), dim=1)


def pixel_embedder(size: int | None = None) -> PixelEmbedder:
    return PixelEmbedder(size)
