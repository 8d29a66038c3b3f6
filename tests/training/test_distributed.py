"""The distribution strategies. Data-parallel training on CPU (gloo, 2 processes under torchrun): the gathered loss
and the parameter update of 2 ranks × half a batch equal those of 1 process × the whole batch. One process
(`SingleProcess`): every collective is the identity, and the step's random numbers are those of any world size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepmetric.training.distributed import Distributed, GradientSync, SingleProcess
from tests.fixtures import one_torch_thread
from tests.training import dist_cases

REPO = Path(__file__).resolve().parents[2]
# Float32 sums in another order (half-batch convolutions, the gradient averaged over ranks). Measured: the
# losses are bitwise equal, parameters after one SGD step (lr 0.05, moves of 8e-3 to 2.5) within 6.3e-8;
# without gathering the update differs by 2.8e-3. Stated tolerances: loss 1e-6 relative, parameters 1e-6.
LOSS_RTOL, PARAM_ATOL = 1e-6, 1e-6


def torchrun(module: str, *args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", module, *args]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    torchrun("tests.training.dist_cases", str(out))
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], ints: bool = True) -> tuple[float, str]:
    assert a.keys() == b.keys()
    worst, where = 0.0, ""
    for k in a:
        if a[k].is_floating_point():
            d = float((a[k] - b[k]).abs().max()) if a[k].numel() else 0.0
            if d > worst:
                worst, where = d, k
        elif ints:
            assert torch.equal(a[k], b[k]), k
    return worst, where


@pytest.mark.parametrize("name", list(dist_cases.METHODS))
def test_two_ranks_with_gathering_equal_one_process(ranks_out, name):
    with one_torch_thread():
        ref_loss, ref_state = dist_cases.reference_step(name)
    before = dist_cases.build_case(name)[0].state_dict()
    r0 = torch.load(ranks_out / f"{name.replace('/', '_')}_rank0.pt")
    r1 = torch.load(ranks_out / f"{name.replace('/', '_')}_rank1.pt")
    # every rank saw the same global batch, hence the same loss, and applied the same averaged update
    assert r0["loss"] == r1["loss"]
    assert _max_diff(r0["state"], r1["state"])[0] == 0.0
    assert r0["loss"] == pytest.approx(ref_loss, rel=LOSS_RTOL)
    if name.endswith("/adam"):
        # Adam's update is ~lr × sign(gradient): rounding flips the sign of near-zero network gradients, so only
        # the margin parameters β (sizeable gradients; the shared β has none in the class step) are compared.
        r0["state"], ref_state, before = ({k: v for k, v in d.items() if "criterion" in k}
                                          for d in (r0["state"], ref_state, before))
    diff, where = _max_diff(r0["state"], ref_state)
    assert diff <= PARAM_ATOL, f"{name}: {where} differs by {diff:.2e} from the one-process update"
    moved, _ = _max_diff(before, ref_state, ints=False)
    assert moved > 100 * PARAM_ATOL  # the step did move the parameters (the comparison is not vacuous)


def test_without_gathering_each_rank_sees_only_its_half(ranks_out):
    with one_torch_thread():
        _, ref_state = dist_cases.reference_step(dist_cases.NO_GATHER)
    r0 = torch.load(ranks_out / f"{dist_cases.NO_GATHER}_nogather_rank0.pt")
    assert _max_diff(r0["state"], ref_state)[0] > 10 * PARAM_ATOL


def test_share_takes_every_world_size_th_image_of_each_section():
    d0, d1 = Distributed(rank=0, world_size=2), Distributed(rank=1, world_size=2)
    batch = list(range(100, 108))
    assert d0.share(batch) == [100, 102, 104, 106] and d1.share(batch) == [101, 103, 105, 107]
    assert d0.share(batch, sections=2) == [100, 102, 104, 106]  # sections of 4: (100..103) and (104..107)
    assert d1.share(batch, sections=2) == [101, 103, 105, 107]
    assert sorted(d0.share(batch) + d1.share(batch)) == batch
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        d0.share(range(6), sections=2)


def test_one_process_gather_is_the_identity():
    d = Distributed()
    x, y = torch.randn(4, 3, requires_grad=True), torch.arange(4)
    gx, gy = d.gather(x, y)
    assert gx is x and gy is y
    assert d.gradient_sync([torch.nn.Parameter(torch.zeros(1))]) is None
    assert isinstance(GradientSync, type)


# --- the one-process strategy ------------------------------------------------------------------------------------
def test_single_process_collectives_are_the_identity():
    s = SingleProcess()
    assert (s.rank, s.world_size, s.local_world_size, s.is_main, s.enabled) == (0, 1, 1, True, False)
    assert s.device_for("cpu") == torch.device("cpu")
    assert s.share(range(5), sections=2) == [0, 1, 2, 3, 4]
    s.check_same("anything", object())  # one rank cannot disagree with itself
    obj = {"a": [1]}
    assert s.broadcast_object(obj) is obj and s.all_gather_object(obj) == [obj]
    assert s.all_reduce_mean({"loss": 2.0}) == {"loss": 2.0}
    assert s.main_only(lambda: "rank 0") == "rank 0"
    assert s.embed_shards(lambda start, stop: np.arange(start, stop), 5).tolist() == [0, 1, 2, 3, 4]
    module = torch.nn.BatchNorm1d(3)
    assert s.sync_batchnorm(module) is module and s.gradient_sync(module.parameters()) is None
    before = {k: v.clone() for k, v in module.state_dict().items()}
    s.broadcast_module(module)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    with s.local_main_first():
        pass
    s.barrier()
    s.close()
    with pytest.raises(ValueError, match="gather needs at least one tensor"):
        s.gather()


def test_single_process_draws_what_one_rank_and_two_ranks_draw():
    """The step and gather seeds are those of `Distributed` at any world size: a one-process run's random numbers
    (dropout, miners) are a 2-rank run's after each gather, and rank 0's before it."""
    draws = []
    for strategy in (SingleProcess(), Distributed(), Distributed(rank=0, world_size=2)):
        strategy.begin_step(3, 1, 4)
        before = torch.rand(2)
        strategy._shared_rng()  # what every gather ends with (a 2-rank gather needs a process group)
        draws.append((before, torch.rand(2)))
    for before, after in draws[1:]:
        assert torch.equal(before, draws[0][0]) and torch.equal(after, draws[0][1])
    rank1 = Distributed(rank=1, world_size=2)
    rank1.begin_step(3, 1, 4)
    assert not torch.equal(torch.rand(2), draws[0][0])  # each rank its own stream before the gather


def test_only_the_main_rank_runs_main_only_work():
    assert Distributed(rank=1, world_size=2).main_only(lambda: 1 / 0) is None
    assert Distributed(rank=0, world_size=2).main_only(lambda: "written") == "written"


def test_sync_batchnorm_needs_cuda(caplog):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert Distributed().sync_batchnorm(module) is module  # one rank: nothing to synchronise
    with caplog.at_level("WARNING", logger="deepmetric.training.distributed"):
        assert Distributed(rank=0, world_size=2).sync_batchnorm(module) is module
    assert "sync_batchnorm needs CUDA" in caplog.text
    on_gpu = Distributed(rank=0, world_size=2, device=torch.device("cuda", 0)).sync_batchnorm(module)
    assert isinstance(on_gpu[1], torch.nn.SyncBatchNorm)  # conversion itself needs no GPU


def test_a_one_rank_job_trains_on_the_configured_device():
    assert Distributed(device=torch.device("cuda", 0)).device_for("cpu") == torch.device("cpu")
    assert Distributed(rank=0, world_size=2, device=torch.device("cpu")).device_for("cuda:7") == torch.device("cpu")
