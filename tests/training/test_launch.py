"""The torchrun launcher of the train stage: its command lines, its refusal to run nested, its failure message."""

from __future__ import annotations

import pytest

from deepmetric.data.images import ImageLimits
from deepmetric.training.config import parse_train
from deepmetric.training.launch import (DistributedRunError, RunSpec, failure_message, join_command,
                                        refuse_nested_launch, root_cause, torchrun_args)

TAIL = """
E1129 03:59:22.875000 10209 api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 10224) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
deepmetric.training.worker FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-29_03:59:22
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 10223)  (SIGTERM)
  error_file: /tmp/x/error.json
  traceback : RuntimeError: Connection closed by peer
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-29_03:59:22
  host      : gpu-node-3
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 10224)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 10224
============================================================
"""


def test_root_cause_names_the_rank_host_and_signal():
    assert root_cause(TAIL) == ("rank 1 (local_rank: 1) on gpu-node-3, exit code -9 (pid: 10224)  (SIGKILL): "
                                "Signal 9 (SIGKILL) received by PID 10224")
    msg = failure_message(1, TAIL, None)
    assert "rank 1 (local_rank: 1) on gpu-node-3" in msg and "no checkpoint directory" in msg
    # a failure before any worker ran (no torchrun summary): the last lines of its output instead
    assert "ModuleNotFoundError" in failure_message(1, "Traceback ...\nModuleNotFoundError: x\n", None)


def test_command_lines():
    one, _ = parse_train({"distributed": {"nproc_per_node": 4}})
    assert torchrun_args(one.distributed) == ["--standalone", "--nnodes", "1", "--nproc-per-node", "4",
                                              "--max-restarts", "0"]
    two, _ = parse_train({"distributed": {"nproc_per_node": 8, "nnodes": 2, "rdzv_endpoint": "node0:29500"}})
    assert join_command(two, 1) == (
        "torchrun --nnodes 2 --node-rank 1 --master-addr node0 --master-port 29500 --nproc-per-node 8 "
        "--max-restarts 0 -m deepmetric.training.worker --join --backend auto --device auto --timeout-s 1800")
    c10d, _ = parse_train({"distributed": {"nnodes": 2, "rdzv_backend": "c10d", "rdzv_endpoint": "h:1", "rdzv_id": "j7"}})
    assert torchrun_args(c10d.distributed)[:8] == ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                                                   "h:1", "--rdzv-id", "j7"]


def test_the_stage_refuses_to_run_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(DistributedRunError, match="started inside a torchrun worker"):
        refuse_nested_launch()


def test_the_run_spec_carries_the_image_limits_to_every_rank():
    spec = RunSpec(train={"method": "margin"}, model={"resize": 32}, root="data", checkpoint_dir=None,
                   limits=ImageLimits(max_pixels=1000, max_aspect_ratio=3.0))
    text = spec.to_json()
    assert '"limits": {' in text and RunSpec.from_json(text) == spec
    assert RunSpec.from_json(text).limits == ImageLimits(1000, 3.0)
    default = RunSpec(train={}, model={}, root="data", checkpoint_dir="ckpt")
    assert RunSpec.from_json(default.to_json()) == default and default.limits is None  # fit's default applies


def test_each_rank_gets_its_share_of_the_cores_this_process_may_use_unless_omp_num_threads_is_set(monkeypatch):
    from deepmetric.runtime import available_cores
    from deepmetric.training.launch import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    d = parse_train({"distributed": {"nproc_per_node": 2}})[0].distributed
    assert worker_env(d)["OMP_NUM_THREADS"] == str(max(1, available_cores() // 2))
    many = parse_train({"distributed": {"nproc_per_node": 64}})[0].distributed
    assert worker_env(many)["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(d)["OMP_NUM_THREADS"] == "3"
