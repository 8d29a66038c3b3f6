"""The training loop: epochs of steps, and callbacks around them. Method-agnostic: everything method-specific
goes through `deepmetric.methods.base.Method`; everything rank-specific through the strategy
(`deepmetric.training.distributed`); everything else a run does around its steps is a callback
(`deepmetric.training.callbacks`).

`fit` builds the run — the method from its seed, precision (`deepmetric.training.precision`), the optimiser, the
data path (`deepmetric.training.data`: image cache, DataLoader workers, seeded augmentation), the context a
method sees (`deepmetric.training.context`) — and `run_epochs` trains it. Per epoch: seed the global generators
(so a resumed epoch is the epoch it would have been) → ``on_epoch_start`` (lr schedule, the method's epoch
hook) → ``method.batch_sampler(...)`` → per batch ``method.training_step(images, labels, ctx)`` with the step's
seed (``strategy.begin_step``, in one process too) and ``on_step_end`` (progress) → the epoch's row →
``on_epoch_end`` (validation on the validation classes, best epoch, log, checkpoint). The model returned is the
best epoch's.

Several processes (torchrun, `deepmetric.training.distributed.Distributed`): every rank runs this same loop on
its share of each global batch; methods see the global batch through ``ctx.gather``; gradients are averaged in
``optimizer_step``; parameters and buffers are broadcast from rank 0 after the epoch hook and before validation;
validation and ``ctx.extract`` embed in shards, one per rank; only rank 0 writes the checkpoint and returns the
model.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import InputSpec, augmentation
from deepmetric.methods import Method, MethodParams
from deepmetric.runtime import (batches_seed, epoch_seed, eval_loader_workers, init_seed, resolve_workers,
                                seed_everything)
from deepmetric.training.callbacks import (BestEpoch, Callback, CallbackList, Checkpoint, EpochLog, FitState,
                                           LrSchedule, MethodEpochHook, Progress, Validation, fingerprint)
from deepmetric.training.config import TrainConfig, apply_group_lr
from deepmetric.training.context import LoopContext
from deepmetric.training.data import TrainLoader, choose_cache, open_images, resolve_decode
from deepmetric.training.distributed import SingleProcess
from deepmetric.training.model_io import build_method, make_payload
from deepmetric.training.precision import Precision

log = logging.getLogger(__name__)

# The columns of an epoch's row that measure the run, not the model: they differ on every run, so they stay out of
# the model file (a DVC output, a function of its inputs) and go to the training log and timings.
TIMING_COLUMNS = ("seconds", "images_per_s")


def make_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser over the method's named groups (``train.optimizer``, absolute rates from ``group_lr``)."""
    groups = [g for g in method.param_groups(cfg.optimizer.lr, cfg.optimizer.weight_decay) if g["params"]]
    groups = apply_group_lr(groups, cfg.optimizer.group_lr, method.name)
    names = [g["name"] for g in groups]
    if len(set(names)) != len(names):
        raise ValueError(f"method {method.name!r} returned duplicate optimiser group names {names}")
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    o = cfg.optimizer
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "radam":
        return torch.optim.RAdam(groups, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


@dataclass
class FitResult:
    payload: dict[str, Any] | None  # None on ranks other than 0
    log: list[dict[str, Any]]
    resumed_from: int
    extra: dict[str, Any] = field(default_factory=dict)

    def log_csv(self) -> str:
        buf = io.StringIO()
        pd.DataFrame(self.log).to_csv(buf, index=False)
        return buf.getvalue()

    def timings(self) -> dict[str, float]:
        """How long the epochs' training loops took (validation passes excluded), over every epoch of the log (a
        resumed run's earlier epochs included)."""
        return {"train_seconds": round(sum(float(row.get("seconds", 0.0)) for row in self.log), 1)}


def fit(
    manifest: pd.DataFrame,
    root: str,
    cfg: TrainConfig,
    params: MethodParams,
    spec: InputSpec,
    *,
    checkpoint_dir: str | Path | None = None,
    limits: ImageLimits | None = None,
    cache_dir: str | Path | None = None,
    strategy: SingleProcess | None = None,
    callbacks: Iterable[Callback] = (),
) -> FitResult:
    """Train ``cfg.method`` on the manifest's ``train`` split; select the best epoch on ``val``.

    ``checkpoint_dir``: where ``last.pt`` is kept and resumed from (None: no checkpoints). ``limits``: the
    per-image bounds (None: Pillow's own pixel limit, the default aspect ratio). ``cache_dir``: the decoded-image
    cache (``train.cache``). ``strategy``: this process's place in a torchrun job (`Distributed`, from
    `deepmetric.training.worker`); one process when None. ``callbacks``: called after the built-in ones."""
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    val = manifest[manifest["split"] == "val"].reset_index(drop=True)
    if train.empty:
        raise ValueError("the manifest has no `train` rows")
    classes = np.sort(train["label"].unique())
    strategy = strategy or SingleProcess()
    limits = limits or ImageLimits(max_pixels=None)
    device = strategy.device_for(cfg.device)

    method = _build_method(cfg, params, len(classes), device, strategy)
    precision = Precision(device, cfg.precision, cfg.channels_last, cfg.compile)
    precision.prepare(method)
    optimizer = make_optimizer(method, cfg)

    workers = resolve_workers(cfg.num_workers, shared_by=strategy.local_world_size)
    decode = resolve_decode(cfg.decode, device)
    cache = choose_cache(cfg.cache, cache_dir, spec, manifest[manifest["split"].isin(["train", "val"])])
    progress = cfg.progress and strategy.is_main
    with strategy.local_main_first():  # one process per machine fills the image cache, the others then read it
        train_images = open_images(root, train, spec, cache, limits.max_pixels, workers, progress,
                                   limits.max_aspect_ratio)
        val_images = (open_images(root, val, spec, cache, limits.max_pixels, workers, progress,
                                  limits.max_aspect_ratio) if len(val) else None)
    loader = TrainLoader(train_images, augmentation(spec, cfg.augment), device, workers, cfg.prefetch_factor, decode)

    ctx = LoopContext(
        method=method, optimizer=optimizer, device=device, labels=np.searchsorted(classes, train["label"].to_numpy()),
        seed=cfg.seed, epochs=cfg.epochs, loader=loader, eval_images=train_images, spec=spec,
        eval_batch_size=cfg.eval_batch_size, precision=precision,
        eval_workers=eval_loader_workers(workers, len(train), cfg.eval_batch_size),
        base_lrs={g["name"]: g["lr"] for g in optimizer.param_groups},
        strategy=strategy, grad_sync=strategy.gradient_sync(method.parameters()),
    )
    state = FitState(cfg=cfg, ctx=ctx, strategy=strategy,
                     steps=cfg.steps_per_epoch or max(1, len(train) // cfg.batch.size))
    val_labels = val["label"].to_numpy()
    hooks = default_callbacks(
        cfg, strategy, val_images=val_images, val_labels=val_labels,
        val_workers=eval_loader_workers(workers, len(val_labels), cfg.eval_batch_size),
        checkpoint=Checkpoint(checkpoint_dir, fingerprint(cfg, params, spec, train)) if checkpoint_dir else None,
    )
    try:
        run_epochs(state, CallbackList([*hooks, *callbacks]))
    finally:
        ctx.close()
    payload = strategy.main_only(lambda: _best_model(state, spec, classes))
    return FitResult(payload=payload, log=state.log, resumed_from=state.start_epoch,
                     extra={"world_size": strategy.world_size})


def _build_method(cfg: TrainConfig, params: MethodParams, num_classes: int, device: torch.device,
                  strategy: SingleProcess) -> Method:
    """The method's initial weights from the seed, SyncBatchNorm when asked, rank 0's weights on every rank."""
    seed_everything(init_seed(cfg.seed))
    method = build_method(cfg, params, num_classes).to(device)
    if cfg.distributed.sync_batchnorm:
        method.backbone = strategy.sync_batchnorm(method.backbone)
    strategy.broadcast_module(method)  # every rank starts from rank 0's weights
    return method


def default_callbacks(cfg: TrainConfig, strategy: SingleProcess, *, val_images: ManifestImages | None,
                      val_labels: np.ndarray, val_workers: int, checkpoint: Checkpoint | None) -> list[Callback]:
    """What every run does around its epochs, in order: lr schedule, the method's epoch hook, progress,
    validation (with two validation classes or more), best epoch, log line, checkpoint (when given)."""
    out: list[Callback] = [LrSchedule(cfg.optimizer.milestones, cfg.optimizer.gamma), MethodEpochHook(),
                           Progress(cfg.progress and strategy.is_main)]
    if val_images is not None and len(np.unique(val_labels)) >= 2:
        out.append(Validation(val_images, val_labels, batch_size=cfg.eval_batch_size, num_workers=val_workers,
                              select_metric=cfg.select_metric))
    out += [BestEpoch(), EpochLog(strategy.is_main)]
    if checkpoint is not None:
        out.append(checkpoint)
    return out


def run_epochs(state: FitState, callbacks: Callback) -> None:
    """Epochs ``state.start_epoch`` … ``cfg.epochs - 1`` of ``state.steps`` steps, with the callbacks' hooks."""
    cfg, ctx, strategy = state.cfg, state.ctx, state.strategy
    method = ctx.method
    callbacks.on_fit_start(state)
    for epoch in range(state.start_epoch, cfg.epochs):
        ctx.epoch = epoch
        seed_everything(epoch_seed(cfg.seed, epoch))
        method.train()
        callbacks.on_epoch_start(state)
        batches = list(method.batch_sampler(ctx.labels, cfg.batch, batches_seed(cfg.seed, epoch), state.steps))
        strategy.check_same(f"{cfg.method}'s batch sampler for epoch {epoch + 1}", batches)
        totals, n_images, seconds = _train_steps(state, batches, callbacks)
        totals = strategy.all_reduce_mean(totals)  # the mean over ranks (equal when the loss sees the global batch)
        strategy.broadcast_module(method)  # rank 0's BatchNorm statistics for validation and the checkpoint
        state.row = {
            "epoch": epoch + 1,
            **{k: v / max(1, len(batches)) for k, v in totals.items()},
            "lr": max(g["lr"] for g in ctx.optimizer.param_groups),
            "seconds": round(seconds, 3),
            "images_per_s": round(n_images / max(seconds, 1e-9), 2),
        }
        state.val, state.score = {}, None
        state.log.append(state.row)
        callbacks.on_epoch_end(state)
    callbacks.on_fit_end(state)


def _train_steps(state: FitState, batches: list[list[int]], callbacks: Callback) -> tuple[dict[str, float], int,
                                                                                          float]:
    """One epoch's steps: (sum of each statistic, images trained on by every rank, seconds)."""
    cfg, ctx, strategy = state.cfg, state.ctx, state.strategy
    share = partial(strategy.share, sections=ctx.method.batch_sections)
    totals: dict[str, float] = {}
    n_images = 0
    t0 = time.perf_counter()
    for indices, raw in ctx.loader.epoch(batches, cfg.seed, ctx.epoch, share=share):
        images, labels = ctx.batch(indices, raw)
        strategy.begin_step(cfg.seed, ctx.epoch, ctx.step)
        stats = ctx.method.training_step(images, labels, ctx)
        ctx.step += 1
        n_images += len(indices) * strategy.world_size
        for k, v in stats.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        callbacks.on_step_end(state, stats)
    return totals, n_images, time.perf_counter() - t0


def _best_model(state: FitState, spec: InputSpec, classes: np.ndarray) -> dict[str, Any]:
    """The model file's payload with the best epoch's weights, and the log without its timings (`TIMING_COLUMNS`):
    the same inputs give the same file, byte for byte."""
    method, best = state.ctx.method, state.best
    if best["state"] is not None:
        method.load_state_dict(best["state"])
    log_rows = [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in state.log]
    return make_payload(method, state.cfg, spec, len(classes), best_epoch=best["epoch"], val=best["val"],
                        train_classes=[int(c) for c in classes], log=log_rows)
