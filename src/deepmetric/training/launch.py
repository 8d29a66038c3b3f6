"""Launch the train stage under torchrun from inside a Kedro node, and read back rank 0's result.

The Kedro node (`pipelines/train/nodes.py`) validates the parameters, then, when `train.distributed` asks for
more than one process, calls `launch`: the validated configuration and the manifest go to a temporary run
folder, and ``python -m torch.distributed.run … -m deepmetric.training.worker RUN_DIR`` trains. The worker
imports neither Kedro nor the pipelines, so no rank starts a second Kedro session; rank 0 writes the
checkpoints (as a one-process run does) and ``result.pt``, which becomes the node's outputs.

Other machines of a multi-node run join with `join_command` (printed when the run starts); they receive the
run's configuration and manifest from this node over the process group, so they need only the code and the
images at the same path.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from deepmetric.data.images import ImageLimits
from deepmetric.io.atomic import atomic_path
from deepmetric.runtime import threads_per_worker
from deepmetric.training.callbacks import CHECKPOINT
from deepmetric.training.config import DistributedConfig, InputConfig, TrainConfig
from deepmetric.training.distributed import under_torchrun
from deepmetric.training.loop import FitResult

log = logging.getLogger(__name__)

SPEC_FILE = "run.json"
MANIFEST_FILE = "manifest.parquet"
RESULT_FILE = "result.pt"
WORKER_MODULE = "deepmetric.training.worker"


class DistributedRunError(RuntimeError):
    """A multi-process training run failed; the message names the rank and the cause."""


@dataclass
class RunSpec:
    """What every rank needs to train: the validated blocks, the data root, the image limits, where checkpoints,
    the image cache and the DVCLive log (rank 0) go."""

    train: dict[str, Any]
    model: dict[str, Any]
    root: str
    checkpoint_dir: str | None
    cache_dir: str | None = None
    limits: ImageLimits | None = None  # None: `fit`'s default
    live_dir: str | None = None  # the DVCLive folder (`deepmetric.training.callbacks.LiveLog`); None: none

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        data = json.loads(text)
        limits = data.pop("limits", None)
        return cls(**data, limits=None if limits is None else ImageLimits(**limits))


def refuse_nested_launch() -> None:
    """The train stage must not itself run under torchrun: every rank would start its own Kedro session and
    write the same artefacts."""
    if under_torchrun():
        raise DistributedRunError(
            f"the train stage was started inside a torchrun worker (RANK={os.environ.get('RANK')}, "
            f"WORLD_SIZE={os.environ.get('WORLD_SIZE')}): run `kedro run --pipelines train` (or `dvc repro`) once, "
            "without torchrun; with train.distributed.nproc_per_node > 1 it starts torchrun itself. To run the "
            f"training processes by hand use `torchrun … -m {WORKER_MODULE}` (README: Training on several GPUs)."
        )


def torchrun_args(d: DistributedConfig, node_rank: int = 0) -> list[str]:
    """torchrun's options for this configuration, as node ``node_rank`` (the launching node is 0)."""
    args = ["--nproc-per-node", str(d.nproc_per_node), "--max-restarts", str(d.max_restarts)]
    if d.nnodes == 1:
        return ["--standalone", "--nnodes", "1", *args]
    host, _, port = (d.rdzv_endpoint or "").rpartition(":")
    if d.rdzv_backend == "static":
        return ["--nnodes", str(d.nnodes), "--node-rank", str(node_rank), "--master-addr", host,
                "--master-port", port, *args]
    return ["--nnodes", str(d.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", d.rdzv_endpoint or "",
            "--rdzv-id", d.rdzv_id, *args]


def worker_options(cfg: TrainConfig) -> list[str]:
    """What a joining worker must know before it can receive the run's configuration: how to join."""
    d = cfg.distributed
    return ["--backend", d.backend, "--device", cfg.device, "--timeout-s", str(d.timeout_s)]


def join_command(cfg: TrainConfig, node_rank: int = 1) -> str:
    """The command another machine runs (from its copy of the project) to join this run."""
    return shlex.join(["torchrun", *torchrun_args(cfg.distributed, node_rank), "-m", WORKER_MODULE, "--join",
                       *worker_options(cfg)])


def worker_env(d: DistributedConfig) -> dict[str, str]:
    env = dict(os.environ)
    # torchrun sets OMP_NUM_THREADS=1 when unset; on CPU give each process its share of the cores this process may
    # use (not the host's: tens of spinning OpenMP threads per rank in a 2-CPU container stall every step)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_worker(d.nproc_per_node)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def write_run_dir(run_dir: Path, spec: RunSpec, manifest: pd.DataFrame) -> None:
    (run_dir / SPEC_FILE).write_text(spec.to_json())
    manifest.to_parquet(run_dir / MANIFEST_FILE, index=False)


def read_run_dir(run_dir: Path) -> tuple[RunSpec, pd.DataFrame]:
    return RunSpec.from_json((run_dir / SPEC_FILE).read_text()), pd.read_parquet(run_dir / MANIFEST_FILE)


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    with atomic_path(run_dir / RESULT_FILE) as tmp:
        torch.save(result, tmp)


def launch(
    manifest: pd.DataFrame,
    root: str,
    cfg: TrainConfig,
    spec: InputConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    limits: ImageLimits | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    keep_run_dir: bool = False,
    live_dir: str | os.PathLike[str] | None = None,
) -> FitResult:
    """Train under torchrun with ``cfg.distributed``; rank 0's result (its ``extra`` holds ``world_size`` and
    ``kedro_loaded``, whether a rank had imported Kedro). The arguments are `deepmetric.training.loop.fit`'s;
    ``live_dir``: rank 0 logs the epochs there with DVCLive (`deepmetric.training.callbacks.LiveLog`)."""
    refuse_nested_launch()
    d = cfg.distributed
    ckpt = str(Path(checkpoint_dir).resolve()) if checkpoint_dir else None
    run_spec = RunSpec(train=cfg.model_dump(mode="json"), model=spec.model_dump(mode="json"),
                       root=str(Path(root).resolve()), checkpoint_dir=ckpt,
                       cache_dir=str(Path(cache_dir).resolve()) if cache_dir else None,
                       limits=limits, live_dir=str(Path(live_dir).resolve()) if live_dir else None)
    run_dir = Path(tempfile.mkdtemp(prefix="deepmetric-torchrun-"))
    try:
        write_run_dir(run_dir, run_spec, manifest)
        cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(d), "-m", WORKER_MODULE,
               *worker_options(cfg), str(run_dir)]
        log.info("train: %d process(es) on this machine × %d machine(s): %s", d.nproc_per_node, d.nnodes,
                 shlex.join(cmd))
        if d.nnodes > 1:
            for node in range(1, d.nnodes):
                log.warning("train: waiting for node %d; on it, from the project folder, run:\n  %s", node,
                            join_command(cfg, node))
        code, tail = _run(cmd, worker_env(d))
        if code != 0:
            raise DistributedRunError(failure_message(code, tail, ckpt))
        result_path = run_dir / RESULT_FILE
        if not result_path.exists():
            raise DistributedRunError(
                "torchrun finished but rank 0 left no result: with c10d rendezvous rank 0 may run on another "
                "machine; use rdzv_backend: static so that this machine is node 0"
            )
        out = torch.load(result_path, map_location="cpu", weights_only=False)
        if out["kedro_loaded"]:
            log.warning("train: a training rank imported Kedro; deepmetric.training.worker should not (a rank must "
                        "never open a Kedro session)")
        else:
            log.info("train: %d ranks finished; none imported Kedro", out["world_size"])
        return FitResult(payload=out["payload"], log=out["log"], resumed_from=out["resumed_from"],
                         extra={k: out[k] for k in ("world_size", "kedro_loaded")})
    finally:
        if not keep_run_dir:
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run torchrun, passing its output through, and keep the tail of stderr for the error message."""
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    tail = bytearray()

    def pump() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read1(65536):
            try:
                sys.stderr.write(chunk.decode("utf-8", "replace"))
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            tail.extend(chunk)
            del tail[: max(0, len(tail) - 200_000)]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = proc.wait()
    except BaseException:
        # interrupted (Ctrl-C, a Kedro failure elsewhere): stop the whole torchrun process group
        _terminate(proc)
        raise
    reader.join(timeout=10)
    return code, tail.decode("utf-8", "replace")


def _terminate(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def root_cause(tail: str) -> str:
    """torchrun's "Root Cause (first observed failure)" block, condensed to one line per field."""
    marker = "Root Cause (first observed failure):"
    if marker not in tail:
        return ""
    block = tail.split(marker, 1)[1].split("=" * 20, 1)[0]
    fields: dict[str, str] = {}
    trace: list[str] = []
    in_trace = False
    for raw in block.splitlines():
        line = raw.strip()
        if in_trace:
            if line:
                trace.append(line)
            continue
        key, sep, value = line.partition(":")
        if sep and key.strip() in {"host", "rank", "exitcode", "error_file", "traceback"}:
            fields[key.strip()] = value.strip()
            in_trace = key.strip() == "traceback"
    last = trace[-1] if trace else fields.get("traceback", "")
    parts = [f"rank {fields.get('rank', '?')} on {fields.get('host', '?')}", f"exit code {fields.get('exitcode', '?')}"]
    return ", ".join(parts) + (f": {last}" if last else "")


def checkpoint_note(checkpoint_dir: str | None) -> str:
    if not checkpoint_dir:
        return "no checkpoint directory was set, so nothing is kept"
    path = Path(checkpoint_dir) / CHECKPOINT
    if not path.exists():
        return f"no checkpoint was written yet ({path})"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return f"the last checkpoint {path} (after epoch {state['epochs_done']}) is intact; rerun to resume from it"
    except Exception as e:  # noqa: BLE001 - report, do not mask the original failure
        return f"the checkpoint {path} could not be read ({e})"


def failure_message(code: int, tail: str, checkpoint_dir: str | None) -> str:
    cause = root_cause(tail)
    what = cause or f"torchrun exited with code {code}"
    last = [ln for ln in tail.splitlines() if ln.strip()][-5:]
    detail = "" if cause else "\n" + "\n".join(last)
    return (f"distributed training failed ({what}); the other ranks were stopped. "
            f"{checkpoint_note(checkpoint_dir)}.{detail}")
