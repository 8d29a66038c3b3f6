"""Behaviour pinned across refactors: the sha256 of the weights after a few steps (2 epochs × 2 steps, validation
picking the best epoch) of margin and of every seed method, in one process and as 2 gloo ranks under torchrun, equals
the value recorded before the training code was reshaped (`tests.training.trajectory_cases`).

The digests are of float32 CPU arithmetic at one thread, on the CPU capability they were recorded with (oneDNN and
MKL pick kernels by instruction set, which changes rounding); elsewhere the comparison is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures import make_bars
from tests.training import trajectory_cases as cases

REPO = Path(__file__).resolve().parents[2]
RECORDED_ON = "AVX512"
# (method, processes) → sha256 of the trained weights; recorded on the code before the reshaping (issue 18).
DIGESTS: dict[tuple[str, int], str] = {
    ("margin", 1): "cd3c0219ad72dfc03049623ba0711ae32ce449991e0885a5da75e07bf48587d6",
    ("ranked_list", 1): "da8201589ee44f96606f3812193d221880cce3d938a432c511feee57fa52c15b",
    ("intra_batch", 1): "ebe41b8be4acd00ac08966c7a85a9586f5b023d5f89699b252c70cab915512d0",
    ("divide_conquer", 1): "0033dbe24d54936ba37a667dab68a8a922a70a7e67726c38a87355971f90ba81",
    ("sharing", 1): "1a83eefce7056106f2a2b71520173e6930026a46adf3f8fc4b76a6f4be4b7251",
    ("margin", 2): "4147a16f9be93f655d185b7a2f6e3f9895bcb0f74aa5aedd37bde80efa99d4ef",
    ("ranked_list", 2): "a38dbabc258d41bb8e156c27da00266f3638e2e061a40095e588ffefb14354c2",
    ("intra_batch", 2): "4353d486c0fed1ab55760abc7e3409e1106e36af314385085d7c3188496941bc",
    ("divide_conquer", 2): "ae458aa52cdc0a2654ed57066de948caa52628a32b1404f4e7c1f16b23e94825",
    ("sharing", 2): "69426465b6daa09fbacc3770a9ef3164ee2a9176e1f87b313b745cd9e5db8d3d",
}

needs_capability = pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != RECORDED_ON,
    reason=f"digests recorded on CPU capability {RECORDED_ON}; this machine has "
           f"{torch.backends.cpu.get_cpu_capability()} (other kernels round differently)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trajectory")
    manifest = make_bars(root, lambda c: "train" if c < 6 else ("val" if c < 8 else "test"), size=32)
    manifest.to_parquet(root / "manifest.parquet", index=False)
    return root, manifest


@pytest.fixture(scope="module")
def two_process_digests(data, tmp_path_factory):
    root, _ = data
    out = tmp_path_factory.mktemp("trajectory_out")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "tests.training.trajectory_cases", str(root), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return json.loads((out / "digests.json").read_text())


@needs_capability
@pytest.mark.parametrize("method", cases.METHODS)
def test_one_process_weights_are_the_recorded_ones(data, method):
    from deepmetric.training.loop import fit

    root, manifest = data
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg, params = cases.config(method)
        res = fit(manifest, str(root), cfg, params, cases.SPEC)
    finally:
        torch.set_num_threads(before)
    assert cases.weights_digest(res.payload["state_dict"]) == DIGESTS[(method, 1)]


@needs_capability
@pytest.mark.parametrize("method", cases.METHODS)
def test_two_process_weights_are_the_recorded_ones(two_process_digests, method):
    assert two_process_digests[method] == DIGESTS[(method, 2)]


def test_digest_sees_every_byte():
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    b = {"w": torch.tensor([0.0, 0.0, 1e-30]), "b": torch.ones(2)}
    assert cases.weights_digest(a) != cases.weights_digest(b)
    assert cases.weights_digest(a) == cases.weights_digest(dict(reversed(list(a.items()))))
