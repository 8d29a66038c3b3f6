"""What `fit` does around its epochs and steps, one callback each (pytorch-metric-learning's trainer hooks are the
model): the learning-rate schedule, the method's epoch hook, the progress bar, validation, the best epoch, the
epoch's log line, the DVCLive metrics and plots, checkpoints and resuming.

Every callback sees the run through a `FitState` and may override any of the hooks of `Callback`; at each
point of `fit` the callbacks are called in list order:

    on_fit_start     once, before the first epoch (Checkpoint resumes here)
    on_epoch_start   epoch and its seed set, method in train mode; before the batches are drawn
    on_step_end      after each optimiser step, with the step's statistics
    on_epoch_end     the epoch's row is in ``state.log``; validation, best epoch, log line, checkpoint
    on_fit_end       once, after the last epoch

A callback does what only rank 0 should do through ``state.strategy`` (``main_only``), never by testing ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.transforms import InputSpec
from deepmetric.evaluation.embed import method_embedder
from deepmetric.evaluation.metrics import evaluate_embeddings
from deepmetric.io.atomic import atomic_path
from deepmetric.methods import Method, MethodParams
from deepmetric.training.config import TrainConfig
from deepmetric.training.context import LoopContext, embed_sharded
from deepmetric.training.distributed import SingleProcess

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
# Settings that may change between a run and its resumption without invalidating the checkpoint.
# `distributed`: a run may resume on another number of processes (the state is the same model).
_RESUMABLE_KEYS = ("epochs", "progress", "num_workers", "prefetch_factor", "device", "eval_batch_size", "distributed")


def _no_best() -> dict[str, Any]:
    return {"epoch": -1, "score": -np.inf, "state": None, "val": {}}


@dataclass
class FitState:
    """The run as the loop and its callbacks share it."""

    cfg: TrainConfig
    ctx: LoopContext  # the method, optimiser, epoch and global step (what the method sees)
    strategy: SingleProcess
    steps: int  # batches per epoch
    start_epoch: int = 0  # the first epoch this call trains (after a resumed checkpoint's)
    log: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best: dict[str, Any] = field(default_factory=_no_best)  # epoch (1-based), score, val metrics, state (rank 0)
    row: dict[str, Any] = field(default_factory=dict)  # the row of the epoch being finished
    val: dict[str, float] = field(default_factory=dict)  # its validation metrics (empty: not validated)
    score: float | None = None  # its selection score (None: not validated)


class Callback:
    """Base of every callback: each hook does nothing until overridden."""

    def on_fit_start(self, state: FitState) -> None:
        pass

    def on_epoch_start(self, state: FitState) -> None:
        pass

    def on_step_end(self, state: FitState, stats: dict[str, float]) -> None:
        pass

    def on_epoch_end(self, state: FitState) -> None:
        pass

    def on_fit_end(self, state: FitState) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks as one: each hook calls theirs in order."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args: Any) -> None:
        for c in self.callbacks:
            getattr(c, hook)(*args)

    def on_fit_start(self, state: FitState) -> None:
        self._each("on_fit_start", state)

    def on_epoch_start(self, state: FitState) -> None:
        self._each("on_epoch_start", state)

    def on_step_end(self, state: FitState, stats: dict[str, float]) -> None:
        self._each("on_step_end", state, stats)

    def on_epoch_end(self, state: FitState) -> None:
        self._each("on_epoch_end", state)

    def on_fit_end(self, state: FitState) -> None:
        self._each("on_fit_end", state)


# --- the epoch's start ------------------------------------------------------------------------------------------
class LrSchedule(Callback):
    """Step decay: every group's lr × ``gamma`` for each milestone (0-based epoch) reached; the per-group scales a
    method sets (`TrainContext.set_lr_scale`) go back to 1 at the start of every epoch."""

    def __init__(self, milestones: Sequence[int], gamma: float) -> None:
        self.milestones = list(milestones)
        self.gamma = gamma

    def factor(self, epoch: int) -> float:
        return self.gamma ** sum(epoch >= m for m in self.milestones)

    def on_epoch_start(self, state: FitState) -> None:
        state.ctx.reset_lr(self.factor(state.ctx.epoch))


class MethodEpochHook(Callback):
    """The method's ``on_epoch_start`` (re-clustering, freezing…); then every rank holds rank 0's result (D&C's
    clusters and masks)."""

    def on_epoch_start(self, state: FitState) -> None:
        state.ctx.method.on_epoch_start(state.ctx)
        state.strategy.broadcast_module(state.ctx.method)


# --- progress and logs ------------------------------------------------------------------------------------------
class Progress(Callback):
    """A tqdm bar per epoch with the running loss (``enabled``: ``train.progress``, on rank 0)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def on_epoch_start(self, state: FitState) -> None:
        cfg = state.cfg
        self.bar = tqdm(total=state.steps, desc=f"{cfg.method} epoch {state.ctx.epoch + 1}/{cfg.epochs}",
                        disable=not self.enabled, leave=False)

    def on_step_end(self, state: FitState, stats: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.4f}")

    def on_epoch_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EpochLog(Callback):
    """One log line per epoch with its row (``enabled``: rank 0)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def on_epoch_end(self, state: FitState) -> None:
        if self.enabled:
            row = state.row
            log.info("epoch %d/%d %s", row["epoch"], state.cfg.epochs, {k: v for k, v in row.items() if k != "epoch"})


class LiveLog(Callback):
    """The per-epoch metrics of rank 0 through DVCLive (DVC's own logger) into ``directory``: one
    ``plots/metrics/<name>.tsv`` per column of the epoch's row (step = the epoch, 1-based), and ``metrics.json``
    with the latest epoch's values, written after every epoch — what `dvc plots show` draws and what `dvc exp show`
    shows of a running experiment. The folder starts fresh with every run; a resumed run writes the checkpoint's
    epochs first, so it holds every epoch of the model. Its timings differ on every run: it is not a DVC output."""

    SKIP = ("epoch", "best_epoch")  # the step itself; the best epoch is the model's (metrics.json of evaluate)

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.live: Any = None

    def on_fit_start(self, state: FitState) -> None:
        state.strategy.main_only(lambda: self._open(state.log))

    def on_epoch_end(self, state: FitState) -> None:
        state.strategy.main_only(lambda: self._write(state.row))

    def on_fit_end(self, state: FitState) -> None:
        if self.live is not None:
            self.live.end()
            self.live = None

    def _open(self, done: list[dict[str, Any]]) -> None:
        from dvclive import Live

        class _Live(Live):
            def _init_dvc(self) -> None:
                # DVCLive 3.49 reads the git revision of the repository it runs in, and fails on a repository
                # without a commit (scmrepo's "Empty git repo"): the files it writes do not need it.
                try:
                    super()._init_dvc()
                except Exception as e:  # scmrepo.exceptions.SCMError, not one of DVC's own
                    log.debug("DVCLive without DVC's repository information: %s", e)

        # dvcyaml=None: dvc.yaml declares the plots (the project's file is never rewritten); save_dvc_exp=False:
        # `dvc exp run` makes the experiments, a plain run makes none.
        self.live = _Live(str(self.directory), resume=False, report=None, dvcyaml=None, save_dvc_exp=False)
        for row in done:
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        self.live.step = int(row["epoch"])
        for name, value in row.items():
            if name not in self.SKIP:
                self.live.log_metric(name, float(value))
        self.live.next_step()


# --- validation and the best epoch ------------------------------------------------------------------------------
class Validation(Callback):
    """Embeds the validation images (in shards over the ranks) after every epoch and scores them: the
    ``val_*`` columns of the epoch's row and ``state.score`` (``select_metric``)."""

    def __init__(self, images: ManifestImages, labels: np.ndarray, *, batch_size: int, num_workers: int,
                 select_metric: str) -> None:
        self.images, self.labels = images, labels
        self.batch_size, self.num_workers, self.select_metric = batch_size, num_workers, select_metric

    def on_epoch_end(self, state: FitState) -> None:
        ctx = state.ctx
        embed = method_embedder(ctx.method, ctx.spec.mean, ctx.spec.std)
        emb = embed_sharded(state.strategy, embed, self.images, self.batch_size, ctx.device, self.num_workers)
        metrics = evaluate_embeddings(emb, self.labels, ks=(1,), with_nmi=False)
        state.row.update({f"val_{k}": v for k, v in metrics.items()})
        if self.select_metric not in metrics:
            raise ValueError(f"train.select_metric {self.select_metric!r} is not one of {sorted(metrics)}")
        state.val, state.score = metrics, metrics[self.select_metric]


def state_copy(method: Method) -> dict[str, torch.Tensor]:
    """The method's weights, detached on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in method.state_dict().items()}


class BestEpoch(Callback):
    """Keeps the best epoch (highest ``state.score``; without validation the last epoch is the best) and its
    weights (rank 0); writes ``best_epoch`` into the row."""

    def on_epoch_end(self, state: FitState) -> None:
        epoch = state.ctx.epoch
        score = float(epoch) if state.score is None else state.score
        if score > state.best["score"]:
            method = state.ctx.method
            state.best = {"epoch": epoch + 1, "score": float(score), "val": state.val,
                          "state": state.strategy.main_only(lambda: state_copy(method))}
        state.row["best_epoch"] = state.best["epoch"]


# --- checkpoints ------------------------------------------------------------------------------------------------
def fingerprint(cfg: TrainConfig, params: MethodParams, spec: InputSpec, train: pd.DataFrame) -> str:
    """What a checkpoint is valid for: every setting that changes the training trajectory, and the data."""
    blob = {
        "train": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _RESUMABLE_KEYS},
        "params": params.model_dump(mode="json"),
        "model": spec.model_dump(mode="json"),
        "data": hashlib.sha256(
            pd.util.hash_pandas_object(train[["path", "label"]], index=False).values.tobytes()
        ).hexdigest(),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def read_checkpoint(path: Path, fingerprint: str, epochs: int) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None (none yet, other settings or data, more epochs than asked)."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        log.warning("checkpoint %s was made with other settings or data: starting fresh", path)
        return None
    if state["epochs_done"] > epochs:
        log.warning("checkpoint %s has %d epochs, more than train.epochs=%d: starting fresh",
                    path, state["epochs_done"], epochs)
        return None
    return state


class Checkpoint(Callback):
    """``directory/last.pt`` after every epoch (rank 0, written atomically; every rank waits for it), and the
    resumption from it: rank 0 reads it when it was made with the same settings and data (`fingerprint`) and
    sends it to every rank, which go on after its last epoch as if never stopped."""

    def __init__(self, directory: str | Path, fingerprint: str) -> None:
        self.path = Path(directory) / CHECKPOINT
        self.fingerprint = fingerprint

    def on_fit_start(self, state: FitState) -> None:
        strategy, ctx = state.strategy, state.ctx
        saved = strategy.broadcast_object(strategy.main_only(
            lambda: read_checkpoint(self.path, self.fingerprint, state.cfg.epochs)))
        if saved is None:
            return
        ctx.method.load_state_dict(saved["state_dict"])
        ctx.optimizer.load_state_dict(saved["optimizer"])
        ctx.precision.load_state_dict(saved.get("scaler"))
        state.log, state.best, state.start_epoch = saved["log"], saved["best"], saved["epochs_done"]
        ctx.step = saved["step"]
        strategy.main_only(lambda: log.info("resuming from %s after epoch %d of %d", self.path,
                                            state.start_epoch, state.cfg.epochs))

    def on_epoch_end(self, state: FitState) -> None:
        state.strategy.main_only(lambda: self.save(state))
        state.strategy.barrier()  # the checkpoint of this epoch is complete before any rank goes on

    def save(self, state: FitState) -> None:
        ctx = state.ctx
        with atomic_path(self.path) as tmp:
            torch.save({
                "fingerprint": self.fingerprint, "epochs_done": ctx.epoch + 1, "step": ctx.step,
                "state_dict": state_copy(ctx.method), "optimizer": ctx.optimizer.state_dict(),
                "scaler": ctx.precision.state_dict(), "best": state.best, "log": state.log,
            }, tmp)
