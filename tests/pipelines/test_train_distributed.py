"""The train stage with 2 processes under torchrun (gloo, CPU) on a tiny dataset: a killed rank stops the run with
a clear error and an intact checkpoint; the stage resumes from it through Kedro — as 2 machines × 1 process
joined by static rendezvous on localhost — and its model evaluates and exports like a one-process one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from deepmetric.io.datasets import ParquetDataset, TorchDataset
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training import launch as launch_module
from deepmetric.training.launch import DistributedRunError, join_command, launch
from deepmetric.training.callbacks import CHECKPOINT
from deepmetric.training.model_io import build_method
from tests.fixtures import free_port, make_bars
from tests.pipelines.kedro_helpers import load_params, run_stage

SPEC = InputConfig(resize=32, crop=32)
# num_workers pinned: `auto` would scale the loader workers with the machine running the tests
TRAIN = {"epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False, "eval_batch_size": 64,
         "num_workers": 1, "batch": {"classes_per_batch": 4, "samples_per_class": 2},
         "distributed": {"nproc_per_node": 2}}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train_distributed")
    root = tmp / "dataset"
    manifest = make_bars(root, lambda c: "train" if c < 6 else ("val" if c < 8 else "test"))
    ParquetDataset(str(tmp / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    return tmp, root, manifest


def _params(root: Path, train: dict) -> dict:
    return {
        "data": {"dataset": "glyphs", "root": str(root)}, "train": train, "model": SPEC.model_dump(),
        "train_checkpoint_dir": str(root.parent / "data/06_models/checkpoints"),
        "train_live_dir": str(root.parent / "data/08_reporting/train"),
        "train_cache_dir": str(root.parent / "data/05_model_input/image_cache"),
        # fmr: 2 validation classes of 6 images hold 36 negative pairs (10 / fmr needs fmr >= 0.28)
        "evaluate": {**load_params("evaluate")["evaluate"], "progress": False, "grid": {"queries": 2, "neighbours": 2},
                     "fmr": [0.5, 0.3]},
        "export": {**load_params("export")["export"], "exporter": "torchscript"},
    }


def _in_thread(fn, *args, **kwargs):
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def _rank_pid(rank: int, timeout: float) -> int:
    """The pid of the training worker of ``rank`` among this test's own descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in psutil.Process().children(recursive=True):
            try:
                if "deepmetric.training.worker" in " ".join(p.cmdline()) and p.environ().get("RANK") == str(rank):
                    return p.pid
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError(f"no worker process of rank {rank} appeared")


class _Records(logging.Handler):
    """The messages of one logger."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_kill_a_rank_then_resume_through_the_train_stage_then_evaluate_and_export(work, monkeypatch):
    """One scenario, so that the 2-process runs it needs are few (each costs interpreter and torch start-up):
    1. a 2-process run (the launcher the train node calls) loses rank 1 to SIGKILL after its first checkpoint:
       the run stops with a clear error and the checkpoint is intact;
    2. `kedro run --pipelines train` resumes from it as 2 machines × 1 process (node 1 joins with the command
       the launcher prints) and writes model.pt and the log like a one-process stage;
    3. evaluate and export run on that model as on a one-process model."""
    tmp, root, manifest = work
    # one OpenMP thread per rank, as the other multi-process tests and the joiner below: the launcher's default
    # (the cores this process may use / ranks) differs between machines, and this test is about failures
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ckpt = tmp / "data/06_models/checkpoints"
    cfg, _ = parse_train({**TRAIN, "epochs": 200})
    thread, box = _in_thread(launch, manifest, str(root), cfg, SPEC, checkpoint_dir=ckpt)
    victim = _rank_pid(1, timeout=120)
    deadline = time.monotonic() + 240
    while not (ckpt / CHECKPOINT).exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not (ckpt / CHECKPOINT).exists():
        # where each rank waits: the worker prints every thread's stack on SIGUSR1 (into this test's stderr)
        for rank in (0, 1):
            with contextlib.suppress(AssertionError, ProcessLookupError):
                os.kill(_rank_pid(rank, timeout=1), signal.SIGUSR1)
        time.sleep(3)
    assert (ckpt / CHECKPOINT).exists(), box
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run did not stop after a rank was killed"
    err = box.get("error")
    assert isinstance(err, DistributedRunError), box
    message = str(err)
    assert "rank 1" in message and "SIGKILL" in message and "is intact; rerun to resume" in message
    state = torch.load(ckpt / CHECKPOINT, map_location="cpu", weights_only=False)
    done = state["epochs_done"]
    assert 1 <= done < 200 and f"after epoch {done})" in message
    assert not [p for p in ckpt.parent.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left behind"
    assert not [p for p in psutil.Process().children(recursive=True) if "deepmetric.training.worker" in
                " ".join(p.cmdline())], "a worker outlived the failed run"

    # 2. the train stage resumes, as 2 machines × 1 process: node 0 is this Kedro run, node 1 joins by hand
    port = free_port()
    resume = {**TRAIN, "epochs": done + 1, "distributed": {"nproc_per_node": 1, "nnodes": 2,
                                                             "rdzv_endpoint": f"127.0.0.1:{port}"}}
    cmd = join_command(parse_train(resume)[0], node_rank=1).split()
    assert cmd[0] == "torchrun" and "--join" in cmd
    joiner_log = tmp / "joiner.log"
    with joiner_log.open("w") as sink:
        joiner = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *cmd[1:]], cwd=tmp,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=sink, stderr=subprocess.STDOUT)
        # the launcher's log, on a logger of its own: Kedro re-applies the logging configuration during a run,
        # which strips handlers from the project's loggers (and pytest's caplog from the root)
        records = _Records()
        probe = logging.Logger("launch-probe", logging.INFO)
        probe.addHandler(records)
        monkeypatch.setattr(launch_module, "log", probe)
        try:
            run_stage("train", tmp, _params(root, resume))
            joiner.wait(timeout=120)
        finally:
            if joiner.poll() is None:
                joiner.kill()
    assert joiner.returncode == 0, joiner_log.read_text()[-4000:]
    assert "train: 2 ranks finished; none imported Kedro" in records.messages
    payload = TorchDataset(str(tmp / "data/06_models/model.pt")).load()
    assert payload["train"]["distributed"]["nnodes"] == 2
    # the same model file as a one-process run's: same keys, shapes and fields
    one_cfg, method_params = parse_train({**TRAIN, "distributed": {}})
    one = build_method(one_cfg, method_params, payload["num_classes"]).state_dict()
    assert {k: tuple(v.shape) for k, v in payload["state_dict"].items()} == {k: tuple(v.shape) for k, v in one.items()}
    # rank 0's DVCLive log: every epoch, the resumed ones included
    log = pd.read_csv(tmp / "data/08_reporting/train/plots/metrics/images_per_s.tsv", sep="\t")
    assert log["step"].tolist() == list(range(1, done + 2)) and (log["images_per_s"] > 0).all()
    assert (tmp / "data/08_reporting/train/plots/metrics/val_map@r.tsv").is_file()

    # 3. evaluate and export, as for any model file
    params = _params(root, resume)
    run_stage("evaluate", tmp, params)
    metrics = json.loads((tmp / "data/08_reporting/metrics.json").read_text())
    assert {"recall@1", "map@r", "nmi"} <= set(metrics) and 0 <= metrics["map@r"] <= 1
    run_stage("export", tmp, params)
    report = json.loads((tmp / "data/08_reporting/export.json").read_text())
    assert report["passed"] and report["recall@1_onnx"] == pytest.approx(report["recall@1_pytorch"])
