"""The distribution strategy of a training run: what the loop calls where ranks would differ. Every collective
of training lives here, so the loop (`deepmetric.training.loop`), its callbacks and the methods never branch on
ranks.

- `SingleProcess`: a plain run, rank 0 of 1. Every collective is the identity; only the per-step seeding is
  done, so that a one-process run draws what a run on any number of ranks draws.
- `Distributed`: data parallel across processes started by torchrun, one process per device, NCCL on GPUs,
  gloo on CPU. `Distributed.from_env()` joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); in a plain process it is a single rank that behaves as
  `SingleProcess`.

What a strategy does:

- `share(indices, sections)`: the rank's share of a global batch. Every rank builds the same global batch (the
  method's seeded sampler) and takes every ``world_size``-th image of each section, so the set of images of a
  step is that of a one-process run, and each rank sees every class of a P × K batch.
- `gather(*tensors)`: the global batch's tensors, all-gathered in the sampler's order. The local part keeps its
  autograd graph (its gradient scaled by ``world_size``); the other ranks' parts are constants. Every rank
  computes the same loss, and averaging gradients over ranks (`GradientSync`) then gives exactly the gradient
  of the one-process loss over the global batch for every parameter: ``(1/W) Σ_r W ∂L/∂x_r ∂x_r/∂θ = ∂L/∂θ`` for
  the network, ``∂L/∂β`` unchanged for parameters of the loss (proxies, learnable margins).
- random numbers: `begin_step` seeds each step (per rank: dropout before the gather), and every gather re-seeds
  from (seed, epoch, step, gather number) alone (`deepmetric.runtime`), in a one-process run too, so random
  miners (distance-weighted sampling) and dropout after the gather draw the same for any number of ranks.
- `GradientSync` (`gradient_sync`): averages gradients between backward and the optimiser step with bucketed
  all-reduces that start during backward (as DDP does). It is not `DistributedDataParallel` because methods call
  sub-modules directly and may take two optimiser steps per iteration (Sharing), while DDP synchronises only
  around a forward through its wrapper.
- broadcasts (`broadcast_module`, `broadcast_object`), `all_reduce_mean`, `check_same`, `barrier`,
  `local_main_first`, `embed_shards` (each rank embeds a contiguous shard, results concatenated in order),
  `sync_batchnorm`, and `main_only` (what only rank 0 does: it alone writes artefacts, logs and checkpoints).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from deepmetric.parallel import shard_bounds
from deepmetric.runtime import gather_seed, resolve_device, seed_torch, step_seed

log = logging.getLogger(__name__)

# torchrun (and any launcher using the env:// convention) sets these for each worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

T = TypeVar("T")


def under_torchrun() -> bool:
    """True inside a process started by torchrun (or another env:// launcher)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or all(k in os.environ for k in TORCHRUN_ENV)


class SingleProcess:
    """The strategy of a one-process run: rank 0 of 1; every collective is the identity.

    `Distributed` extends it and overrides what differs with several ranks, so both keep the same interface and
    the same per-step seeding."""

    rank = 0
    world_size = 1
    local_rank = 0
    local_world_size = 1
    backend: str | None = None
    gather_embeddings = True
    # the step being trained (`begin_step`) and how many gathers it made: the seeds of its random numbers
    _rng_seed = _rng_epoch = _rng_step = _gathers = 0

    @property
    def enabled(self) -> bool:
        """More than one rank: collectives communicate."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes artefacts, logs and checkpoints."""
        return self.rank == 0

    def device_for(self, name: str) -> torch.device:
        """The device this process trains on: the configured one (``train.device``)."""
        return resolve_device(name)

    def close(self) -> None:
        """Leave the process group (nothing to leave in one process)."""

    # --- batches ----------------------------------------------------------------------------------------------
    def share(self, indices: Sequence[int], sections: int = 1) -> list[int]:
        """This process's images of a global batch: all of them."""
        return list(indices)

    def check_same(self, what: str, value: Any) -> None:
        """Raise if ``value`` differs between ranks (one rank: it cannot)."""

    # --- random numbers ---------------------------------------------------------------------------------------
    def begin_step(self, seed: int, epoch: int, step: int) -> None:
        """Seed this rank's generator for global step ``step`` of ``epoch`` of a run seeded ``seed``: its own
        stream, so dropout before the gather differs between ranks as it differs between the images of one
        process. (Augmentations have their own per-image seeds.)"""
        self._rng_seed, self._rng_epoch, self._rng_step, self._gathers = seed, epoch, step, 0
        seed_torch(step_seed(seed, epoch, step, self.rank))

    def _shared_rng(self) -> None:
        self._gathers += 1
        seed_torch(gather_seed(self._rng_seed, self._rng_epoch, self._rng_step, self._gathers))

    # --- the global batch -------------------------------------------------------------------------------------
    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The global batch of each tensor: in one process the tensors themselves. The generator is then
        re-seeded from (seed, epoch, step, gather number), as with any number of ranks."""
        if not tensors:
            raise ValueError("gather needs at least one tensor")
        self._shared_rng()
        return tuple(tensors)

    # --- collectives ------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank."""

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """The body runs first on each machine's local rank 0 (e.g. filling the image cache), then on the others."""
        yield

    def main_only(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` on rank 0, None on the other ranks (no communication)."""
        return fn()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank."""
        return obj

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        return [obj]

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (same keys on every rank)."""
        return dict(values)

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of ``module`` from rank ``src``."""

    def sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """``module`` with BatchNorm statistics computed over the global batch (one process: it already is)."""
        return module

    def embed_shards(self, embed: Callable[[int, int], np.ndarray], n: int) -> np.ndarray:
        """``embed(start, stop)`` over this rank's contiguous shard of ``n`` items, concatenated over ranks in
        item order: here, all of them."""
        return embed(0, n)

    def gradient_sync(self, params: Iterable[nn.Parameter], bucket_mb: float = 25.0) -> GradientSync | None:
        """What averages gradients over ranks in ``optimizer_step`` (None: nothing to average)."""
        return None


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient is multiplied by ``scale`` (the world size) on its way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        return grad * ctx.scale, None


@dataclass
class Distributed(SingleProcess):
    """Data parallel: this process's place in a torchrun job. ``world_size == 1`` is a plain process, which
    behaves as `SingleProcess`."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    gather_embeddings: bool = True

    # --- set-up -----------------------------------------------------------------------------------------------
    @classmethod
    def from_env(
        cls, backend: str = "auto", device: str = "auto", timeout_s: int = 1800, gather_embeddings: bool = True
    ) -> Distributed:
        """Join the process group torchrun describes in the environment; a single rank when there is none.

        Devices: with CUDA, rank ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK`` (one process per GPU); otherwise CPU.
        """
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=resolve_device(device), gather_embeddings=gather_embeddings)
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"train.device={device!r} but no CUDA device is available on {_host()}")
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                raise RuntimeError(
                    f"local rank {local_rank} has no GPU: {_host()} has {torch.cuda.device_count()} CUDA device(s); "
                    "set train.distributed.nproc_per_node to at most that number"
                )
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        else:
            dev = torch.device("cpu")
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl" and dev.type != "cuda":
            raise RuntimeError("train.distributed.backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
        if not dist.is_initialized():
            kwargs: dict[str, Any] = {"timeout": timedelta(seconds=timeout_s)}
            if backend == "nccl":
                kwargs["device_id"] = dev
            dist.init_process_group(backend, **kwargs)
        return cls(rank=rank, world_size=world, local_rank=local_rank,
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device=dev, backend=backend,
                   gather_embeddings=gather_embeddings)

    def close(self) -> None:
        import torch.distributed as dist

        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def device_for(self, name: str) -> torch.device:
        """The device torchrun's rank was given (``cuda:LOCAL_RANK`` or the CPU); one rank: the configured one."""
        return self.device if self.enabled else super().device_for(name)

    # --- batches ----------------------------------------------------------------------------------------------
    def share(self, indices: Sequence[int], sections: int = 1) -> list[int]:
        """This rank's images of a global batch: every ``world_size``-th image of each of ``sections`` equal
        consecutive sections (Sharing's class batch + surrogate batch are two sections)."""
        indices = list(indices)
        if not self.enabled:
            return super().share(indices, sections)
        n = len(indices)
        if n % (sections * self.world_size):
            raise ValueError(
                f"a global batch of {n} images in {sections} section(s) does not split evenly over "
                f"{self.world_size} processes"
            )
        size = n // sections
        out: list[int] = []
        for s in range(sections):
            out.extend(indices[s * size : (s + 1) * size][self.rank :: self.world_size])
        return out

    def check_same(self, what: str, value: Any) -> None:
        """Raise on every rank if ``value`` (e.g. an epoch's batch list) differs between ranks."""
        if not self.enabled:
            return
        digest = hashlib.sha256(repr(value).encode()).hexdigest()
        digests = self.all_gather_object(digest)
        if len(set(digests)) > 1:
            bad = [r for r, d in enumerate(digests) if d != digests[0]]
            raise RuntimeError(f"{what} differs between ranks (ranks {bad} disagree with rank 0): it must be "
                               "computed from seeded, rank-independent inputs")

    # --- the global batch -------------------------------------------------------------------------------------
    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The global batch of each tensor (dim 0 = this rank's images, in `share` order), in the sampler's
        order. Gradients reach only the local part (×``world_size``, see the module docstring); the tensors
        themselves when there is one rank or ``gather_embeddings`` is off. Either way the generator is then
        re-seeded from (seed, epoch, step, gather number), the same on every rank and for any number of ranks,
        so what the loss draws (miners, dropout after the gather) is what a one-process run draws."""
        if not tensors or not self.enabled or not self.gather_embeddings:
            return super().gather(*tensors)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"gather: tensors disagree on the batch size {[t.shape[0] for t in tensors]}")
        out: list[torch.Tensor | None] = [None] * len(tensors)
        # one all-gather per dtype: the float tensors (embeddings) travel together, the labels on their own
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        for idx in by_dtype.values():
            parts = [tensors[i].reshape(n, -1) for i in idx]
            widths = [p.shape[1] for p in parts]
            packed = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
            full = self._all_gather_rows(packed)
            for i, piece in zip(idx, full.split(widths, dim=1), strict=True):
                out[i] = piece.reshape(self.world_size * n, *tensors[i].shape[1:])
        self._shared_rng()
        return tuple(out)  # type: ignore[arg-type]

    def _all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        local = local.contiguous()
        pieces = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(pieces, local.detach())
        if local.requires_grad:
            pieces[self.rank] = _ScaleGrad.apply(local, float(self.world_size))
        # pieces[r][j] is global image j * W + r (the strided `share`): interleave back to the sampler's order
        return torch.stack(pieces, dim=1).reshape(self.world_size * local.shape[0], *local.shape[1:])

    # --- collectives --------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        import torch.distributed as dist

        if self.enabled:
            dist.barrier()

    def main_only(self, fn: Callable[[], T]) -> T | None:
        return fn() if self.is_main else None

    @contextlib.contextmanager
    def local_main_first(self) -> Iterator[None]:
        """The body runs first on each machine's local rank 0 (e.g. filling the image cache), then on the others."""
        if self.enabled and self.local_rank != 0:
            self.barrier()
        try:
            yield
        finally:
            if self.enabled and self.local_rank == 0:
                self.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled; tensors inside arrive on this rank's device for NCCL)."""
        import torch.distributed as dist

        if not self.enabled:
            return obj
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, device=self._object_device())
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (same keys on every rank)."""
        import torch.distributed as dist

        if not self.enabled or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._object_device())
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist(), strict=True)}

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of ``module`` from rank ``src`` (after per-epoch hooks: D&C's clusters and
        masks, BatchNorm statistics). Shapes are checked first so a mismatch is an error, not a hang."""
        import torch.distributed as dist

        if not self.enabled:
            return
        state = module.state_dict(keep_vars=True)
        shapes = [(k, tuple(v.shape), str(v.dtype)) for k, v in state.items()]
        if any(s != shapes for s in self.all_gather_object(shapes)):
            raise RuntimeError(f"{type(module).__name__}: parameter/buffer shapes differ between ranks")
        with torch.no_grad():
            for t in state.values():
                data = t.data if isinstance(t, nn.Parameter) else t
                dist.broadcast(data, src=src)

    def _object_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def sync_batchnorm(self, module: nn.Module) -> nn.Module:
        """``module`` with its BatchNorm layers as SyncBatchNorm (statistics over the global batch): CUDA only;
        on the CPU each rank keeps its own statistics (a warning says so)."""
        if not self.enabled:
            return module
        if self.device.type != "cuda":
            log.warning("train.distributed.sync_batchnorm needs CUDA: each rank keeps its own BatchNorm statistics")
            return module
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)

    # --- embedding a dataset in shards --------------------------------------------------------------------------
    def embed_shards(self, embed: Callable[[int, int], np.ndarray], n: int) -> np.ndarray:
        """Run ``embed(start, stop)`` on this rank's contiguous shard of ``n`` items; every rank gets the
        concatenation in item order."""
        start, stop = shard_bounds(n, self.world_size, self.rank)
        mine = embed(start, stop)
        if not self.enabled:
            return mine
        parts = self.all_gather_object(mine)
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else mine

    def gradient_sync(self, params: Iterable[nn.Parameter], bucket_mb: float = 25.0) -> GradientSync | None:
        return GradientSync(list(params), self.world_size, bucket_mb) if self.enabled else None


def _host() -> str:
    import socket

    return socket.gethostname()


class GradientSync:
    """Averages gradients over ranks for one backward pass: ``with sync: loss.backward()`` (or ``start()``
    before it, ``finish()`` after it).

    Parameters (those requiring gradients) are packed into buckets of about ``bucket_mb`` in reverse
    registration order, roughly the order backward produces their gradients. A hook after each gradient is
    accumulated starts a bucket's asynchronous all-reduce as soon as the bucket is complete and every earlier
    bucket has started, so communication overlaps backward and every rank issues the same collectives in the
    same order. ``finish()`` starts what is left (a gradient that does not exist here counts as zero), waits,
    and writes the averages back. Each bucket also carries one "has a gradient" flag per parameter, so a
    parameter no rank computed a gradient for stays ``None`` (the optimiser skips it, as in one process).
    """

    def __init__(self, params: list[nn.Parameter], world_size: int, bucket_mb: float = 25.0) -> None:
        self.world_size = world_size
        self.params = [p for p in params if p.requires_grad]
        self.buckets: list[list[nn.Parameter]] = []
        limit = bucket_mb * 2**20
        current: list[nn.Parameter] = []
        size = 0.0
        for p in reversed(self.params):
            nbytes = p.numel() * p.element_size()
            if current and (size + nbytes > limit or p.dtype != current[0].dtype or p.device != current[0].device):
                self.buckets.append(current)
                current, size = [], 0.0
            current.append(p)
            size += nbytes
        if current:
            self.buckets.append(current)
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}
        self._active = False
        self._pending: list[int] = []
        self._next = 0
        self._work: list[tuple[Any, torch.Tensor]] = []
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def __enter__(self) -> GradientSync:
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self._active = False

    def start(self) -> None:
        self._active = True
        self._pending = [len(b) for b in self.buckets]
        self._next = 0
        self._work = []

    def _on_grad(self, p: torch.Tensor) -> None:
        if not self._active:
            return
        b = self._bucket_of.get(id(p))
        if b is None:
            return
        self._pending[b] -= 1
        while self._next < len(self.buckets) and self._pending[self._next] <= 0:
            self._launch(self._next)
            self._next += 1

    def _launch(self, b: int) -> None:
        import torch.distributed as dist

        bucket = self.buckets[b]
        ref = bucket[0]
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
        flags = torch.tensor([p.grad is not None for p in bucket], dtype=ref.dtype, device=ref.device)
        flat = torch.cat([*parts, flags])
        flat.div_(self.world_size)
        self._work.append((dist.all_reduce(flat, async_op=True), flat))

    def finish(self) -> None:
        if not self._active:
            return
        while self._next < len(self.buckets):
            self._launch(self._next)
            self._next += 1
        for (work, flat), bucket in zip(self._work, self.buckets, strict=True):
            work.wait()
            numels = [p.numel() for p in bucket]
            *grads, flags = flat.split([*numels, len(bucket)])
            for p, g, has in zip(bucket, grads, flags.tolist(), strict=True):
                if has <= 0:
                    p.grad = None  # no rank computed one: the optimiser skips it
                elif p.grad is None:
                    p.grad = g.view_as(p).clone()
                else:
                    p.grad.copy_(g.view_as(p))
        self._active = False
        self._work = []

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
