"""What a run takes from the machine, its seed and its source: the device, the seed of every random draw, worker
counts, the one date an output may carry.

The bottom of the package graph: it imports nothing of deepmetric, and torch only inside the functions that
use it (the serving path counts workers on hosts without torch).

**Devices.** `resolve_device` turns a ``device`` parameter (``auto | cpu | cuda | cuda:N``) into a device, or
refuses it naming the parameter.

**Seeds.** Every random draw of a training run is seeded from the configured seed through one function per
purpose: the initial weights (`init_seed`), the global generators at the start of an epoch (`epoch_seed`), the
method's batch sampler (`batches_seed`), a rank's model-side stream for one step (`step_seed`) and its re-seed
after each gather (`gather_seed`), the augmentation of each sample (`sample_seed`) and of each image a method
loads mid-step (`load_seed`). One scheme derives them all (`derive_seed`): a blake2b hash of (seed, purpose,
epoch, step, slot), so they depend on those alone, never on the number of processes, workers or a resume, and
no two purposes share a stream.

**Workers.** One meaning for a worker count: an integer is that many worker processes (0: none, the work runs
in this process) and ``auto`` one per available core (`available_cores`: the CPU affinity, capped by a container's
CPU quota). `resolve_workers` applies it; `resolve_processes` maps the ``processes`` parameters
(``evaluate.processes``, ``index.processes``: processes sharing the work, this one included, 0 for one per core)
onto it.

**Dates.** DVC records every stage output's hash in dvc.lock: a date read from the clock would give a new hash on
every run, so every downstream stage would rerun and every bundle and release hash would change although nothing
did. A date an output must carry (the bundle manifest's ``created``, the run time in great-expectations' data docs)
is the *source date* (`source_date`), as reproducible builds define it: ``$SOURCE_DATE_EPOCH`` (seconds since
1970, UTC) when set, else the committer date of ``HEAD`` of the git work tree the process runs in (the revision
whose code and parameters built the output), else (no git work tree) the current time. Timings (seconds, images/s,
latencies) are measurements of a run, not outputs: they go to the log and to files DVC does not hash
(`deepmetric.io.datasets.ReportDataset`, the training's DVCLive folder).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import os
import random
import subprocess
from enum import IntEnum
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

AUTO = "auto"
# `auto` never starts more DataLoader workers than this: beyond it decoding outruns any single device.
MAX_AUTO_WORKERS = 16


# --- devices ----------------------------------------------------------------------------------------------------
def resolve_device(name: str, parameter: str = "train.device") -> torch.device:
    """``auto`` → CUDA when there is a GPU, else the CPU; otherwise the named device, which must exist here.
    ``parameter`` names the setting in the error message."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{parameter}={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{parameter}={name!r} but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{parameter}={name!r} but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    return dev


# --- seeds ------------------------------------------------------------------------------------------------------
def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (blake2b: stable across processes, platforms and Python versions)."""
    digest = hashlib.blake2b(np.asarray(parts, dtype=np.int64).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seed_torch(seed: int) -> None:
    """``torch.manual_seed`` for the generators a step uses: the CPU one, and CUDA's once CUDA is in use (dropout
    on the GPU). ``torch.manual_seed`` itself probes every accelerator backend, which costs ~5 ms a call on a CUDA
    build without a GPU — twice per step."""
    import torch

    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def seed_everything(seed: int) -> None:
    """Python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class Purpose(IntEnum):
    """The tag of each derivation: every purpose draws from its own stream."""

    INIT = 1
    EPOCH = 2
    BATCHES = 3
    STEP = 4
    GATHER = 5
    SAMPLE = 6
    LOAD = 7


def derive_seed(seed: int, purpose: Purpose, epoch: int = 0, step: int = 0, slot: int = 0) -> int:
    """The one derivation scheme: `mix_seed` of (seed, purpose, epoch, step, slot)."""
    return mix_seed(seed, purpose, epoch, step, slot)


def init_seed(seed: int) -> int:
    """The global generators before the model is built: its initial weights (and the untrained baseline that
    evaluation rebuilds from the same seed)."""
    return derive_seed(seed, Purpose.INIT)


def epoch_seed(seed: int, epoch: int) -> int:
    """The global generators at the start of ``epoch`` (0-based), so a resumed epoch is the epoch it would
    have been."""
    return derive_seed(seed, Purpose.EPOCH, epoch)


def batches_seed(seed: int, epoch: int) -> int:
    """The method's batch sampler for ``epoch``: the same on every rank."""
    return derive_seed(seed, Purpose.BATCHES, epoch)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A rank's model-side generator (dropout before the gather) for global step ``step``."""
    return derive_seed(seed, Purpose.STEP, epoch, step, rank)


def gather_seed(seed: int, epoch: int, step: int, gather: int) -> int:
    """The generator after the ``gather``-th gather (1-based) of a step: the same on every rank and for any
    number of ranks (miners, dropout after the gather)."""
    return derive_seed(seed, Purpose.GATHER, epoch, step, gather)


def sample_seed(seed: int, epoch: int, step: int, slot: int) -> int:
    """The augmentation of one sample: (seed, epoch, step within the epoch, position in the global batch)."""
    return derive_seed(seed, Purpose.SAMPLE, epoch, step, slot)


def load_seed(seed: int, step: int, slot: int) -> int:
    """The augmentation of the ``slot``-th image a method loads itself (``TrainContext.load``) at global step
    ``step``."""
    return derive_seed(seed, Purpose.LOAD, 0, step, slot)


# --- worker counts ----------------------------------------------------------------------------------------------
def cgroup_cpu_limit(root: str | os.PathLike[str] = "/sys/fs/cgroup") -> float | None:
    """The CPUs a container's CPU quota allows (``quota / period``), from cgroup v2's ``cpu.max`` or cgroup v1's
    ``cpu/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` under ``root``; None without a quota (``max``, -1, no such
    files). A process may be allowed every core of the host by its affinity and yet get the time of two."""
    root = os.fspath(root)
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = (f.read().split() + ["100000"])[:2]
        if quota == "max":
            return None
        return int(quota) / int(period) if int(quota) > 0 and int(period) > 0 else None
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            with open(os.path.join(root, folder, "cpu.cfs_quota_us")) as f:
                quota_us = int(f.read())
            with open(os.path.join(root, folder, "cpu.cfs_period_us")) as f:
                period_us = int(f.read())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cores() -> int:
    """The cores this process may use: its CPU affinity (where the platform has one), no more than its container's
    CPU quota allows (rounded up; `cgroup_cpu_limit`). Every worker and thread count of the project derives from
    it: counting the host's cores inside a 2-CPU container starts tens of threads that then wait for each other."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, math.ceil(limit))) if limit else max(1, cores)


def resolve_workers(workers: int | Literal["auto"], *, shared_by: int = 1,
                    limit: int | None = MAX_AUTO_WORKERS) -> int:
    """Worker processes for a count parameter: an integer is that many (0: none, the work runs in this process);
    ``auto`` is one per available core, divided between the ``shared_by`` processes of this machine that each
    start their own, at most ``limit`` (None: no cap), at least 1."""
    if workers == AUTO:
        n = available_cores() // max(1, shared_by)
        return max(1, n if limit is None else min(limit, n))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"a worker count is an integer >= 0 or 'auto', got {workers!r}")
    return workers


def resolve_processes(processes: int) -> int:
    """The ``processes`` parameters (``evaluate.processes``, ``index.processes``): how many processes share the
    work, this one included (1: serial). 0 means ``auto`` — one per available core, uncapped."""
    return resolve_workers(AUTO if processes == 0 else processes, limit=None)


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes' share of the cores (at least one thread)."""
    return max(1, available_cores() // max(1, workers))


def eval_loader_workers(num_workers: int, n_images: int, batch_size: int) -> int:
    """DataLoader workers for a one-off evaluation pass: no more than there are batches."""
    return max(0, min(num_workers, math.ceil(n_images / max(1, batch_size)) - 1))


# --- dates -------------------------------------------------------------------------------------------------------
SOURCE_DATE_ENV = "SOURCE_DATE_EPOCH"


def source_date(cwd: str | os.PathLike[str] | None = None) -> dt.datetime:
    """The source date (see the module docstring), UTC, whole seconds. ``cwd``: the folder whose git ``HEAD``
    counts (default: the current directory). A malformed ``$SOURCE_DATE_EPOCH`` is a ``ValueError`` naming it."""
    raw = os.environ.get(SOURCE_DATE_ENV, "").strip()
    if raw:
        try:
            seconds = int(raw)
        except ValueError:
            raise ValueError(f"${SOURCE_DATE_ENV} must be an integer number of seconds since 1970-01-01 UTC, "
                             f"got {raw!r}") from None
    else:
        try:
            proc = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=cwd, capture_output=True, text=True,
                                  timeout=30)
            seconds = int(proc.stdout.strip()) if proc.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired):
            seconds = None
        if seconds is None:
            return dt.datetime.now(dt.UTC).replace(microsecond=0)
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def source_timestamp(cwd: str | os.PathLike[str] | None = None) -> str:
    """:func:`source_date` as the manifests write dates (ISO 8601, UTC, seconds)."""
    return source_date(cwd).isoformat()
