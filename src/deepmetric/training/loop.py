"""The training loop. Method-agnostic: everything method-specific goes through `deepmetric.methods.base.Method`.

Per epoch: seed (so a resumed epoch is the epoch it would have been) → ``method.on_epoch_start(ctx)`` →
``method.batch_sampler(...)`` → the data path (`deepmetric.training.data`: DataLoader workers, image cache,
seeded augmentation) → ``method.training_step(images, labels, ctx)`` per batch → validation on the validation
classes (MAP@R by default picks the best epoch) → checkpoint (atomic), which a rerun resumes from. Precision,
channels_last and compile are one object (`deepmetric.training.precision.Precision`).

Several processes (torchrun, `deepmetric.training.distributed.Distributed`): every rank runs this same loop on
its share of each global batch; methods see the global batch through ``ctx.gather``; gradients are averaged in
``optimizer_step``; parameters and buffers are broadcast from rank 0 after the epoch hook and before validation;
validation and ``ctx.extract`` embed in shards, one per rank; only rank 0 writes the checkpoint and returns the
model. Each step is seeded (``Distributed.begin_step``), in one process too, so a resumed run is the run it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.images import DEFAULT_MAX_ASPECT_RATIO
from deepmetric.data.transforms import InputSpec, augmentation
from deepmetric.runtime import (batches_seed, epoch_seed, eval_loader_workers, init_seed, resolve_device,
                                resolve_workers, seed_everything)
from deepmetric.training.data import TrainLoader, choose_cache, open_images
from deepmetric.training.precision import Precision
from deepmetric.evaluation.embed import embed_dataset, method_embedder
from deepmetric.evaluation.metrics import evaluate_embeddings
from deepmetric.io.atomic import atomic_path
from deepmetric.methods import Method, MethodParams
from deepmetric.models.preprocess import to_model_input
from deepmetric.training.config import TrainConfig, apply_group_lr
from deepmetric.training.distributed import Distributed, GradientSync
from deepmetric.training.model_io import build_method, make_payload

log = logging.getLogger(__name__)

CHECKPOINT = "last.pt"
# Settings that may change between a run and its resumption without invalidating the checkpoint.
# `distributed`: a run may resume on another number of processes (the state is the same model).
_RESUMABLE_KEYS = ("epochs", "progress", "num_workers", "prefetch_factor", "device", "eval_batch_size", "distributed")


@dataclass
class _Context:
    """The `TrainContext` the loop hands to a method."""

    method: Method
    optimizer: torch.optim.Optimizer
    device: torch.device
    labels: np.ndarray
    seed: int
    epochs: int
    loader: TrainLoader
    eval_images: ManifestImages
    spec: InputSpec
    eval_batch_size: int
    precision: Precision
    eval_workers: int = 0
    dist: Distributed = field(default_factory=Distributed)
    grad_sync: GradientSync | None = None
    epoch: int = 0
    step: int = 0
    lr_scales: dict[str, float] = field(default_factory=dict)
    base_lrs: dict[str, float] = field(default_factory=dict)
    lr_factor: float = 1.0

    def optimizer_step(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at epoch {self.epoch}, step {self.step}")
        self.precision.backward_step(loss, self.optimizer, self.grad_sync)

    def gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.dist.gather(*tensors)

    def batch(self, indices: Sequence[int], images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.as_tensor(self.labels[np.asarray(indices, dtype=np.int64)], device=self.device)
        return to_model_input(images, self.spec.mean, self.spec.std), labels

    def load(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(indices, self.loader.load(indices, self.seed, self.step))

    def extract(self, fn: Callable[[torch.Tensor], torch.Tensor], batch_size: int | None = None) -> np.ndarray:
        was = self.method.training
        self.method.eval()
        try:
            return self.dist.embed_shards(lambda start, stop: embed_dataset(
                lambda x: fn(to_model_input(x, self.spec.mean, self.spec.std)),
                torch.utils.data.Subset(self.eval_images, range(start, stop)),
                batch_size or self.eval_batch_size,
                self.device,
                num_workers=self.eval_workers,
            ), len(self.eval_images))
        finally:
            self.method.train(was)

    def set_lr_scale(self, group: str, scale: float) -> None:
        if group not in self.base_lrs:
            raise KeyError(f"no optimiser group named {group!r}; groups: {sorted(self.base_lrs)}")
        self.lr_scales[group] = scale
        self._apply_lrs()

    def _apply_lrs(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_lrs[g["name"]] * self.lr_factor * self.lr_scales.get(g["name"], 1.0)


def _make_optimizer(method: Method, cfg: TrainConfig) -> torch.optim.Optimizer:
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


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _state_copy(method: Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in method.state_dict().items()}


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


def fit(
    manifest: pd.DataFrame,
    root: str,
    cfg: TrainConfig,
    params: MethodParams,
    spec: InputSpec,
    checkpoint_dir: str | Path | None = None,
    max_pixels: int | None = None,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    cache_dir: str | Path | None = None,
    dist: Distributed | None = None,
) -> FitResult:
    """Train ``cfg.method`` on the manifest's ``train`` split; select the best epoch on ``val``. ``dist``: this
    process's rank in a torchrun job (`deepmetric.training.worker`); a single process when None."""
    train = manifest[manifest["split"] == "train"].reset_index(drop=True)
    val = manifest[manifest["split"] == "val"].reset_index(drop=True)
    if train.empty:
        raise ValueError("the manifest has no `train` rows")
    classes = np.sort(train["label"].unique())
    labels = np.searchsorted(classes, train["label"].to_numpy())
    num_classes = len(classes)
    dist = dist or Distributed()
    device = dist.device if dist.enabled else resolve_device(cfg.device)

    seed_everything(init_seed(cfg.seed))
    method = build_method(cfg, params, num_classes).to(device)
    if cfg.distributed.sync_batchnorm and dist.enabled:
        if device.type == "cuda":
            method.backbone = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method.backbone)
        else:
            log.warning("train.distributed.sync_batchnorm needs CUDA: each rank keeps its own BatchNorm statistics")
    dist.broadcast_module(method)  # every rank starts from rank 0's weights
    precision = Precision(device, cfg.precision, cfg.channels_last, cfg.compile)
    precision.prepare(method)
    optimizer = _make_optimizer(method, cfg)

    workers = resolve_workers(cfg.num_workers, shared_by=dist.local_world_size)
    decode = cfg.decode
    if decode == "gpu" and device.type != "cuda":
        log.warning("train.decode=gpu but training runs on %s: decoding on the CPU instead", device)
        decode = "cpu"
    cache = choose_cache(cfg.cache, cache_dir, spec, manifest[manifest["split"].isin(["train", "val"])])
    with dist.local_main_first():  # one process per machine fills the image cache, the others then read it
        eval_images = open_images(root, train, spec, cache, max_pixels, workers, cfg.progress and dist.is_main,
                                  max_aspect_ratio)
        val_images = (open_images(root, val, spec, cache, max_pixels, workers, cfg.progress and dist.is_main,
                                  max_aspect_ratio) if len(val) else None)
    transform = augmentation(spec, cfg.augment)
    loader = TrainLoader(eval_images, transform, device, workers, cfg.prefetch_factor, decode)
    val_labels = val["label"].to_numpy()
    can_validate = val_images is not None and len(np.unique(val_labels)) >= 2

    ctx = _Context(
        method=method, optimizer=optimizer, device=device, labels=labels, seed=cfg.seed, epochs=cfg.epochs,
        loader=loader, eval_images=eval_images, spec=spec, eval_batch_size=cfg.eval_batch_size,
        precision=precision, eval_workers=eval_loader_workers(workers, len(train), cfg.eval_batch_size),
        base_lrs={g["name"]: g["lr"] for g in optimizer.param_groups},
        dist=dist, grad_sync=dist.gradient_sync(method.parameters()),
    )
    try:
        return _fit_epochs(ctx, cfg, params, spec, train, classes, checkpoint_dir, val_images, val_labels,
                           can_validate, workers)
    finally:
        loader.close()
        if ctx.grad_sync is not None:
            ctx.grad_sync.remove()


def _fit_epochs(ctx: _Context, cfg: TrainConfig, params: MethodParams, spec: InputSpec, train: pd.DataFrame,
                classes: np.ndarray, checkpoint_dir, val_images, val_labels, can_validate: bool,
                workers: int) -> FitResult:
    method, optimizer, device, labels, dist = ctx.method, ctx.optimizer, ctx.device, ctx.labels, ctx.dist
    num_classes = len(classes)
    val_workers = eval_loader_workers(workers, len(val_labels), cfg.eval_batch_size)
    steps = cfg.steps_per_epoch or max(1, len(train) // cfg.batch.size)
    fp = fingerprint(cfg, params, spec, train)

    rows: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -np.inf, "state": None, "val": {}}
    start = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    # Rank 0 reads the checkpoint and sends it to every rank (other machines need not see the file).
    state = _read_checkpoint(ckpt_path, fp, cfg.epochs) if dist.is_main else None
    state = dist.broadcast_object(state)
    if state is not None:
        method.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        ctx.precision.load_state_dict(state.get("scaler"))
        rows, best, start = state["log"], state["best"], state["epochs_done"]
        ctx.step = state["step"]
        if dist.is_main:
            log.info("resuming from %s after epoch %d of %d", ckpt_path, start, cfg.epochs)

    for epoch in range(start, cfg.epochs):
        ctx.epoch = epoch
        seed_everything(epoch_seed(cfg.seed, epoch))
        ctx.lr_scales = {}
        ctx.lr_factor = cfg.optimizer.gamma ** sum(epoch >= m for m in cfg.optimizer.milestones)
        ctx._apply_lrs()
        method.train()
        method.on_epoch_start(ctx)
        dist.broadcast_module(method)  # what the hook decided (D&C's clusters and masks) is rank 0's everywhere
        batches = list(method.batch_sampler(labels, cfg.batch, batches_seed(cfg.seed, epoch), steps))
        dist.check_same(f"{cfg.method}'s batch sampler for epoch {epoch + 1}", batches)
        share = (lambda keys: dist.share(keys, method.batch_sections)) if dist.enabled else None
        t0 = time.perf_counter()
        n_images = 0
        totals: dict[str, float] = {}
        bar = tqdm(ctx.loader.epoch(batches, cfg.seed, epoch, share=share), total=len(batches),
                   desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and dist.is_main),
                   leave=False)
        for indices, raw in bar:
            images, batch_labels = ctx.batch(indices, raw)
            dist.begin_step(cfg.seed, epoch, ctx.step)
            stats = method.training_step(images, batch_labels, ctx)
            ctx.step += 1
            n_images += len(indices) * dist.world_size
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.4f}")
        seconds = time.perf_counter() - t0
        totals = dist.all_reduce_mean(totals)  # the mean over ranks (equal when the loss sees the global batch)
        dist.broadcast_module(method)  # rank 0's BatchNorm statistics for validation and the checkpoint
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            **{k: v / max(1, len(batches)) for k, v in totals.items()},
            "lr": max(g["lr"] for g in optimizer.param_groups),
            "seconds": round(seconds, 3),
            "images_per_s": round(n_images / max(seconds, 1e-9), 2),
        }
        if can_validate:
            embed = method_embedder(method, spec.mean, spec.std)
            emb = dist.embed_shards(lambda start, stop: embed_dataset(
                embed, torch.utils.data.Subset(val_images, range(start, stop)), cfg.eval_batch_size, device,
                num_workers=val_workers), len(val_images))
            val_metrics = evaluate_embeddings(emb, val_labels, ks=(1,), with_nmi=False)
            row.update({f"val_{k}": v for k, v in val_metrics.items()})
            score = val_metrics.get(cfg.select_metric, np.nan)
            if cfg.select_metric not in val_metrics:
                raise ValueError(f"train.select_metric {cfg.select_metric!r} is not one of {sorted(val_metrics)}")
        else:
            val_metrics, score = {}, float(epoch)  # no validation classes: the last epoch is the best
        if score > best["score"]:
            best = {"epoch": epoch + 1, "score": float(score), "val": val_metrics,
                    "state": _state_copy(method) if dist.is_main else None}
        row["best_epoch"] = best["epoch"]
        rows.append(row)
        if dist.is_main:
            log.info("epoch %d/%d %s", epoch + 1, cfg.epochs, {k: v for k, v in row.items() if k != "epoch"})
        if ckpt_path is not None and dist.is_main:
            _save_checkpoint(ckpt_path, {
                "fingerprint": fp, "epochs_done": epoch + 1, "step": ctx.step,
                "state_dict": _state_copy(method), "optimizer": optimizer.state_dict(),
                "scaler": ctx.precision.state_dict(), "best": best, "log": rows,
            })
        dist.barrier()  # the checkpoint of this epoch is complete before any rank goes on

    if not dist.is_main:
        return FitResult(payload=None, log=rows, resumed_from=start, extra={"world_size": dist.world_size})
    if best["state"] is not None:
        method.load_state_dict(best["state"])
    payload = make_payload(
        method, cfg, spec, num_classes, best_epoch=best["epoch"], val=best["val"],
        train_classes=[int(c) for c in classes], log=rows,
    )
    return FitResult(payload=payload, log=rows, resumed_from=start, extra={"world_size": dist.world_size})


def _read_checkpoint(ckpt_path: Path | None, fp: str, epochs: int) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None (none yet, other settings or data, more epochs than asked)."""
    if ckpt_path is None or not ckpt_path.exists():
        return None
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fp:
        log.warning("checkpoint %s was made with other settings or data: starting fresh", ckpt_path)
        return None
    if state["epochs_done"] > epochs:
        log.warning("checkpoint %s has %d epochs, more than train.epochs=%d: starting fresh",
                    ckpt_path, state["epochs_done"], epochs)
        return None
    return state
