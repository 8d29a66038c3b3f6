"""Data-parallel training on CPU (gloo, 2 processes under torchrun): the gathered loss and the parameter
update of 2 ranks × half a batch equal those of 1 process × the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepmetric.training.distributed import Distributed, GradientSync
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
    torch.set_num_threads(1)
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
    torch.set_num_threads(1)
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
