"""torchrun's entry for training (deepmetric.training.worker), run as one process the way the README's single-
machine form does: it trains from a run folder and writes the result there; without one it says how to start a
run; a wrong command line is refused by argparse."""

from __future__ import annotations

import subprocess
import sys

import torch

from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.launch import RESULT_FILE, RunSpec, write_run_dir
from deepmetric.training.model_io import load_model
from tests.fixtures import make_bars

WORKER = [sys.executable, "-m", "deepmetric.training.worker"]


def _worker(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([*WORKER, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _run_folder(tmp_path, epochs: int):
    """A run folder for one process: a margin run of ``epochs`` × 2 steps on a small bars dataset."""
    root = tmp_path / "data"
    manifest = make_bars(root, lambda c: "train" if c < 6 else "test", num_classes=8, per_class=4, size=24)
    cfg, _ = parse_train({"method": "margin", "epochs": epochs, "steps_per_epoch": 2, "embedding_dim": 8,
                          "progress": False, "num_workers": 0,
                          "batch": {"classes_per_batch": 3, "samples_per_class": 2}})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_run_dir(run_dir, RunSpec(train=cfg.model_dump(mode="json"),
                                   model=InputConfig(resize=24, crop=24).model_dump(mode="json"),
                                   root=str(root), checkpoint_dir=None), manifest)
    return run_dir


def test_one_process_trains_from_the_run_folder_and_writes_the_result_there(tmp_path):
    run_dir = _run_folder(tmp_path, epochs=1)
    proc = _worker(str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = torch.load(run_dir / RESULT_FILE, weights_only=False)
    assert result["world_size"] == 1 and not result["kedro_loaded"] and len(result["log"]) == 1
    method, spec = load_model(result["payload"])
    assert spec.crop == 24 and method.embed(torch.zeros(1, 3, 24, 24)).shape == (1, 8)


def test_joining_without_any_run_folder_says_how_to_start_a_run(tmp_path):
    proc = _worker("--join", cwd=tmp_path)
    assert proc.returncode != 0
    assert "no rank was given a run folder: start the run with `kedro run --pipelines train`" in proc.stderr


def test_a_run_folder_and_join_together_or_neither_is_a_usage_error(tmp_path):
    for args in ((), (str(tmp_path), "--join")):
        proc = _worker(*args, cwd=tmp_path)
        assert proc.returncode == 2 and "give either RUN_DIR or --join" in proc.stderr, proc.stderr


def test_sigusr1_prints_where_each_thread_of_a_rank_is_and_the_rank_goes_on(tmp_path):
    import signal
    import threading
    import time

    run_dir = _run_folder(tmp_path, epochs=10_000)
    proc = subprocess.Popen([*WORKER, str(run_dir)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("global batch" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("global batch" in ln for ln in lines), "".join(lines)
        time.sleep(1)  # into the epochs
        proc.send_signal(signal.SIGUSR1)
        while not any("most recent call first" in ln for ln in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert proc.poll() is None, "the rank stopped on SIGUSR1"
        dump = "".join(lines)
        assert "Current thread 0x" in dump and "most recent call first" in dump and '  File "' in dump, dump
    finally:
        proc.terminate()
        proc.wait(timeout=60)
