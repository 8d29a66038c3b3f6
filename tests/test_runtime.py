"""The runtime module (`deepmetric.runtime`): device choice and its errors, the seed derivations, worker counts, the
source date."""

from __future__ import annotations

import datetime as dt
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmetric.runtime import (MAX_AUTO_WORKERS, SOURCE_DATE_ENV, Purpose, available_cores, batches_seed, cgroup_cpu_limit,
                                derive_seed, epoch_seed, eval_loader_workers, gather_seed, init_seed, load_seed,
                                mix_seed, resolve_device, resolve_processes, resolve_workers, sample_seed,
                                seed_everything, seed_torch, source_date, source_timestamp, step_seed,
                                threads_per_worker)

REPO = Path(__file__).resolve().parents[1]


# --- devices ----------------------------------------------------------------------------------------------------
def test_auto_and_cpu_devices():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_device_that_is_not_one_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match=r"evaluate\.device='gpu' is not a device: use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", "evaluate.device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match=r"train\.device='cuda:0' but no CUDA device is available"):
        resolve_device("cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_number_beyond_the_machine_is_refused():
    n = torch.cuda.device_count()
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    with pytest.raises(ValueError, match=rf"train\.device='cuda:{n}' but this machine has {n} CUDA device"):
        resolve_device(f"cuda:{n}")


# --- seeds ------------------------------------------------------------------------------------------------------
def test_mix_seed_is_a_fixed_function_of_its_integers():
    # part of every trained weight's trajectory: the same value in every process, on every platform
    assert mix_seed(1, 2, 3) == 3817744674624027255
    assert mix_seed(1, 2, 3) != mix_seed(3, 2, 1) and mix_seed(1, 2) != mix_seed(1, 2, 0)
    assert all(0 <= mix_seed(s, -1, 2**40) < 2**63 for s in range(50))


def test_each_derivation_depends_on_each_of_its_inputs():
    base = (3, 1, 5, 2)
    for fn in (step_seed, gather_seed, sample_seed):
        values = {fn(*base)} | {fn(*(v + 1 if i == k else v for i, v in enumerate(base))) for k in range(4)}
        assert len(values) == 5, fn.__name__
    assert len({epoch_seed(3, 0), epoch_seed(3, 1), epoch_seed(4, 0)}) == 3
    assert len({batches_seed(3, 0), batches_seed(3, 1), batches_seed(4, 0)}) == 3
    assert len({load_seed(3, 5, 0), load_seed(3, 5, 1), load_seed(3, 6, 0), load_seed(4, 5, 0)}) == 4
    assert init_seed(3) != init_seed(4)


def test_no_two_purposes_share_a_stream():
    # one scheme: (seed, purpose, epoch, step, slot); the same numbers under another purpose give another seed
    assert len({epoch_seed(3, 1), batches_seed(3, 1), step_seed(3, 1, 0, 0), gather_seed(3, 1, 0, 0),
                sample_seed(3, 1, 0, 0), load_seed(3, 0, 0), init_seed(3)}) == 7
    assert sample_seed(3, 1, 2, 0) == derive_seed(3, Purpose.SAMPLE, 1, 2, 0) == mix_seed(3, 6, 1, 2, 0)
    assert min(sample_seed(-(2**63), 0, 0, 0), sample_seed(2**63 - 1, 0, 0, 0)) >= 0  # any train.seed


def test_a_step_stream_is_per_rank_and_a_gather_stream_is_shared():
    # dropout before the gather differs between ranks; what the loss draws after a gather does not
    assert step_seed(0, 1, 7, 0) != step_seed(0, 1, 7, 1)
    assert gather_seed(0, 1, 7, 1) != gather_seed(0, 1, 7, 2)
    assert gather_seed(0, 1, 7, 1) not in {step_seed(0, 1, 7, r) for r in range(8)}


def test_seeds_fit_the_generators_they_seed():
    for seed in (0, 1, 2**31, 10**9):
        for value in (init_seed(seed), epoch_seed(seed, 9), batches_seed(seed, 9), step_seed(seed, 9, 99, 3),
                      gather_seed(seed, 9, 99, 2), sample_seed(seed, 9, 99, 63), load_seed(seed, 99, 63)):
            assert 0 <= value < 2**63
            torch.Generator().manual_seed(value)
            np.random.default_rng(value)


def test_seed_everything_and_seed_torch_reproduce_draws():
    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    seed_everything(11)
    a = draws()
    seed_everything(11)
    assert draws() == a
    seed_everything(12)
    assert draws() != a
    seed_torch(5)
    t = torch.rand(3)
    seed_torch(5)
    assert torch.equal(torch.rand(3), t)


# --- worker counts ----------------------------------------------------------------------------------------------
def test_auto_workers_is_one_per_core_capped():
    n = resolve_workers("auto")
    assert 1 <= n <= 16 and n == min(16, available_cores()) and available_cores() <= len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    assert resolve_workers("auto", shared_by=64) == 1


def test_a_container_s_cpu_quota_caps_the_cores(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2) == 1.5
    (v2 / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(v2) is None
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path / "v1") == 2.0
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path / "v1") is None
    assert cgroup_cpu_limit(tmp_path / "nothing") is None
    # this machine: the affinity, no more than its own quota allows
    quota = cgroup_cpu_limit()
    assert available_cores() == min(len(os.sched_getaffinity(0)), math.ceil(quota) if quota else 10**9)


def test_zero_workers_means_none_and_bad_counts_are_refused():
    assert resolve_workers(0) == 0
    assert resolve_workers("auto", limit=None) == available_cores()
    assert resolve_workers("auto", limit=1) == 1
    for bad in (-1, True, 2.5, "4"):
        with pytest.raises(ValueError, match="a worker count is an integer >= 0 or 'auto'"):
            resolve_workers(bad)


def test_processes_parameters_map_zero_to_auto_uncapped():
    assert resolve_processes(1) == 1 and resolve_processes(5) == 5
    assert resolve_processes(0) == available_cores()  # one per core, not MAX_AUTO_WORKERS
    assert MAX_AUTO_WORKERS == 16


def test_threads_and_evaluation_workers():
    cores = available_cores()
    assert threads_per_worker(1) == cores and threads_per_worker(cores * 4) == 1
    assert eval_loader_workers(4, 10, 4) == 2  # 3 batches: the first needs no worker ahead of it
    assert eval_loader_workers(4, 3, 4) == 0 and eval_loader_workers(0, 100, 4) == 0


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two cores")
def test_auto_counts_the_cores_this_process_may_use():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from deepmetric.runtime import "
            "resolve_workers, resolve_processes, threads_per_worker; "
            "print(resolve_workers('auto'), resolve_processes(0), threads_per_worker(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_runtime_sits_at_the_bottom_and_imports_torch_lazily():
    code = ("import sys, deepmetric.runtime as r; r.resolve_workers('auto'); r.resolve_processes(0); "
            "r.sample_seed(1, 2, 3, 4); "
            "print(sorted(m for m in sys.modules if m.startswith('deepmetric')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split("] ")[0] + "]" == "['deepmetric', 'deepmetric.runtime']"
    assert out.stdout.strip().endswith("False")


# --- the source date (issue 23) ---------------------------------------------------------------------------------
def _git(cwd, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_source_date_epoch_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(SOURCE_DATE_ENV, "1700000000")
    assert source_date(tmp_path) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.UTC)
    assert source_timestamp(tmp_path) == "2023-11-14T22:13:20+00:00"
    monkeypatch.setenv(SOURCE_DATE_ENV, "yesterday")
    with pytest.raises(ValueError, match=r"\$SOURCE_DATE_EPOCH must be an integer.*'yesterday'"):
        source_date(tmp_path)


def test_the_commit_date_of_head_then_now(monkeypatch, tmp_path):
    monkeypatch.delenv(SOURCE_DATE_ENV, raising=False)
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert before <= source_date(tmp_path) <= dt.datetime.now(dt.UTC), "not a git work tree: now"
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("x")
    _git(tmp_path, "add", "f")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2024-02-03T04:05:06+00:00")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", "commit", "-qm", "x")
    monkeypatch.delenv("GIT_COMMITTER_DATE")
    assert source_timestamp(tmp_path) == "2024-02-03T04:05:06+00:00"
    assert source_timestamp(tmp_path) == source_timestamp(tmp_path), "the same on every call"
