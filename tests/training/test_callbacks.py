"""Each callback of the training loop alone (`deepmetric.training.callbacks`), on a real method, optimiser and images."""

from __future__ import annotations

import logging

import pytest
import torch

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.transforms import augmentation
from deepmetric.methods import METHODS
from deepmetric.models.backbones import build_backbone
from deepmetric.training.callbacks import (CHECKPOINT, BestEpoch, Callback, CallbackList, Checkpoint, EpochLog,
                                           FitState, LiveLog, LrSchedule, MethodEpochHook, Progress, Validation,
                                           fingerprint, state_copy)
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.context import LoopContext
from deepmetric.training.data import TrainLoader
from deepmetric.training.distributed import SingleProcess
from deepmetric.training.loop import make_optimizer
from deepmetric.training.model_io import build_method
from deepmetric.training.precision import Precision
from tests.fixtures import make_bars

SPEC = InputConfig(resize=32, crop=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    """4 training classes and 2 validation classes of 4 images each."""
    root = tmp_path_factory.mktemp("bars")
    return str(root), make_bars(root, lambda c: "train" if c < 4 else "val", num_classes=6, per_class=4, size=32)


def make_state(bars, method=None, **train) -> FitState:
    root, manifest = bars
    cfg, params = parse_train({"method": "margin", "embedding_dim": 8, "epochs": 3, "progress": False, **train})
    torch.manual_seed(0)
    method = method or build_method(cfg, params, 4)
    rows = manifest[manifest["split"] == "train"]
    images = ManifestImages(root, rows["path"], SPEC)
    optimizer = make_optimizer(method, cfg)
    ctx = LoopContext(method=method, optimizer=optimizer, device=CPU, labels=rows["label"].to_numpy(), seed=0,
                      epochs=cfg.epochs, loader=TrainLoader(images, augmentation(SPEC, cfg.augment), CPU),
                      eval_images=images, spec=SPEC, eval_batch_size=16, precision=Precision(CPU),
                      base_lrs={g["name"]: g["lr"] for g in optimizer.param_groups})
    return FitState(cfg=cfg, ctx=ctx, strategy=SingleProcess(), steps=2)


def lrs(state: FitState) -> dict[str, float]:
    return {g["name"]: g["lr"] for g in state.ctx.optimizer.param_groups}


def test_lr_schedule_decays_at_milestones_and_resets_the_methods_scales(bars):
    state = make_state(bars, optimizer={"lr": 0.01, "milestones": [1, 2], "gamma": 0.5})
    schedule = LrSchedule(state.cfg.optimizer.milestones, state.cfg.optimizer.gamma)
    assert [schedule.factor(e) for e in range(4)] == [1.0, 0.5, 0.25, 0.25]
    state.ctx.epoch = 1
    schedule.on_epoch_start(state)
    assert set(lrs(state)) >= {"backbone", "head"} and set(lrs(state).values()) == {0.005}
    state.ctx.set_lr_scale("backbone", 0.0)  # a method freezing its backbone for this epoch
    assert lrs(state)["backbone"] == 0.0 and lrs(state)["head"] == 0.005
    state.ctx.epoch = 2
    schedule.on_epoch_start(state)
    assert set(lrs(state).values()) == {0.0025}


class _Strategy(SingleProcess):
    """One process that records the collectives it is asked for."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def broadcast_module(self, module, src=0) -> None:
        self.calls.append("broadcast_module")

    def barrier(self) -> None:
        self.calls.append("barrier")


def test_method_epoch_hook_runs_the_methods_hook_then_shares_its_result(bars):
    margin = METHODS["margin"]

    class Hooked(margin):
        def on_epoch_start(self, ctx) -> None:
            strategy.calls.append(f"hook epoch {ctx.epoch}")

    cfg, params = parse_train({"method": "margin", "embedding_dim": 8})
    state = make_state(bars, method=Hooked(params, build_backbone(cfg.backbone), 8, 4))
    strategy = state.strategy = _Strategy()
    state.ctx.epoch = 2
    MethodEpochHook().on_epoch_start(state)
    assert strategy.calls == ["hook epoch 2", "broadcast_module"]


def test_progress_counts_the_steps_and_shows_the_loss(bars):
    state = make_state(bars)
    bar = Progress(enabled=True)
    bar.on_epoch_start(state)
    for loss in (0.5, 0.25, 0.125):
        bar.on_step_end(state, {"loss": loss})
    assert bar.bar is not None and bar.bar.n == 3 and bar.bar.postfix == "loss=0.1250"
    assert bar.bar.total == state.steps and bar.bar.desc.startswith("margin epoch 1/3")
    bar.on_epoch_end(state)
    assert bar.bar is None
    quiet = Progress(enabled=False)
    quiet.on_epoch_start(state)
    assert quiet.bar is not None and quiet.bar.disable


def test_epoch_log_writes_one_line_on_the_main_rank_only(bars, caplog):
    state = make_state(bars)
    state.row = {"epoch": 2, "loss": 0.5, "best_epoch": 1}
    with caplog.at_level(logging.INFO, logger="deepmetric.training.callbacks"):
        EpochLog(enabled=True).on_epoch_end(state)
        EpochLog(enabled=False).on_epoch_end(state)
    lines = [r.getMessage() for r in caplog.records if r.name == "deepmetric.training.callbacks"]
    assert lines == ["epoch 2/3 {'loss': 0.5, 'best_epoch': 1}"]


def test_validation_scores_the_validation_classes(bars):
    root, manifest = bars
    val = manifest[manifest["split"] == "val"]
    state = make_state(bars)
    state.row = {"epoch": 1}
    images = ManifestImages(root, val["path"], SPEC)
    Validation(images, val["label"].to_numpy(), batch_size=3, num_workers=0, select_metric="map@r").on_epoch_end(state)
    assert {"epoch", "val_recall@1", "val_map@r"} <= set(state.row)
    assert all(k == "epoch" or k.startswith("val_") for k in state.row)
    assert state.score == state.row["val_map@r"] == state.val["map@r"] and 0 <= state.score <= 1
    assert state.ctx.method.training  # back in training mode
    wrong = Validation(images, val["label"].to_numpy(), batch_size=3, num_workers=0, select_metric="nmi")
    with pytest.raises(ValueError, match=r"train\.select_metric 'nmi' is not one of \[.*'map@r'"):
        wrong.on_epoch_end(state)


def test_live_log_writes_every_epoch_with_dvclive_a_resumed_runs_included(bars, tmp_path):
    """A run resumed after epoch 1 (its checkpoint's log in ``state.log``) writes epoch 1 again, then its own: the
    folder holds every epoch of the model, step = epoch; metrics.json the latest. Off rank 0: nothing."""
    import json

    import pandas as pd

    state = make_state(bars)
    state.log = [{"epoch": 1, "loss": 0.9, "lr": 0.1, "seconds": 1.5, "best_epoch": 1}]
    live = LiveLog(tmp_path / "live")
    live.on_fit_start(state)
    state.row = {"epoch": 2, "loss": 0.7, "lr": 0.1, "seconds": 1.25, "val_map@r": 0.5, "best_epoch": 2}
    state.log.append(state.row)
    live.on_epoch_end(state)
    live.on_fit_end(state)
    loss = pd.read_csv(tmp_path / "live/plots/metrics/loss.tsv", sep="\t")
    assert loss.to_dict("list") == {"step": [1, 2], "loss": [0.9, 0.7]}
    assert pd.read_csv(tmp_path / "live/plots/metrics/val_map@r.tsv", sep="\t")["step"].tolist() == [2]
    assert not (tmp_path / "live/plots/metrics/best_epoch.tsv").exists()
    summary = json.loads((tmp_path / "live/metrics.json").read_text())
    assert summary["step"] == 2 and summary["loss"] == 0.7 and summary["seconds"] == 1.25

    from deepmetric.training.distributed import Distributed

    state.strategy = Distributed(rank=1, world_size=2)  # main_only needs no process group
    other = LiveLog(tmp_path / "rank1")
    other.on_fit_start(state)
    other.on_epoch_end(state)
    other.on_fit_end(state)
    assert not (tmp_path / "rank1").exists()


def test_live_log_in_a_git_repository_without_a_commit(bars, tmp_path, monkeypatch):
    """`git init`, `dvc init` and no commit yet (a new project): DVCLive 3.49 alone fails reading the revision; the log is
    written all the same."""
    import subprocess
    import sys

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    state = make_state(bars)
    live = LiveLog(tmp_path / "live")
    live.on_fit_start(state)
    state.row = {"epoch": 1, "loss": 0.5}
    live.on_epoch_end(state)
    live.on_fit_end(state)
    assert (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines() == ["step\tloss", "1\t0.5"]


def _finish_epoch(state: FitState, epoch: int, score: float | None, callback: Callback) -> None:
    state.ctx.epoch = epoch
    with torch.no_grad():
        state.ctx.method.head.bias.fill_(float(epoch))  # weights that tell the epochs apart
    state.row, state.val, state.score = {"epoch": epoch + 1}, ({} if score is None else {"map@r": score}), score
    state.log.append(state.row)
    callback.on_epoch_end(state)


def test_best_epoch_keeps_the_best_scores_weights(bars):
    state = make_state(bars)
    best = BestEpoch()
    for epoch, score in enumerate([0.5, 0.7, 0.6]):
        _finish_epoch(state, epoch, score, best)
    assert [r["best_epoch"] for r in state.log] == [1, 2, 2]
    assert state.best["epoch"] == 2 and state.best["score"] == 0.7 and state.best["val"] == {"map@r": 0.7}
    assert float(state.best["state"]["head.bias"][0]) == 1.0  # epoch 2's weights, not the last epoch's
    unvalidated = make_state(bars)
    for epoch in range(3):
        _finish_epoch(unvalidated, epoch, None, best)
    assert [r["best_epoch"] for r in unvalidated.log] == [1, 2, 3]  # without validation the last epoch is the best


def test_best_epoch_keeps_no_weights_off_the_main_rank(bars):
    from deepmetric.training.distributed import Distributed

    state = make_state(bars)
    state.strategy = Distributed(rank=1, world_size=2)  # main_only needs no process group
    _finish_epoch(state, 0, 0.5, BestEpoch())
    assert state.best["epoch"] == 1 and state.best["state"] is None


def test_checkpoint_saves_each_epoch_and_a_new_run_resumes_from_it(bars, tmp_path):
    root, manifest = bars
    state = make_state(bars)
    fp = fingerprint(state.cfg, state.cfg.method_params(), SPEC, manifest)
    ckpt = Checkpoint(tmp_path, fp)
    ckpt.on_fit_start(state)  # nothing to resume
    assert state.start_epoch == 0 and state.log == []
    best = CallbackList([BestEpoch(), ckpt])
    for epoch, score in enumerate([0.5, 0.7]):
        state.ctx.optimizer_step(state.ctx.method(torch.ones(2, 3, 32, 32)).square().mean())  # Adam has a state
        state.ctx.step += 1
        _finish_epoch(state, epoch, score, best)
    assert (tmp_path / CHECKPOINT).exists() and not list(tmp_path.glob("*.tmp"))

    fresh = make_state(bars)
    assert not torch.equal(fresh.ctx.method.head.bias, state.ctx.method.head.bias)
    Checkpoint(tmp_path, fp).on_fit_start(fresh)
    assert fresh.start_epoch == 2 and fresh.ctx.step == 2 and fresh.log == state.log
    assert fresh.best["epoch"] == 2 and torch.equal(fresh.best["state"]["head.bias"], state.best["state"]["head.bias"])
    for k, v in state_copy(state.ctx.method).items():
        assert torch.equal(fresh.ctx.method.state_dict()[k], v), k
    moments = [(fresh.ctx.optimizer.state[p].get("exp_avg"), state.ctx.optimizer.state[q].get("exp_avg"))
               for p, q in zip(fresh.ctx.method.parameters(), state.ctx.method.parameters(), strict=True)]
    moments = [(a, b) for a, b in moments if b is not None]
    assert moments and all(a is not None and torch.equal(a, b) for a, b in moments)


def test_checkpoint_of_other_settings_or_more_epochs_starts_fresh(bars, tmp_path, caplog):
    root, manifest = bars
    state = make_state(bars)
    fp = fingerprint(state.cfg, state.cfg.method_params(), SPEC, manifest)
    state.ctx.epoch = 2
    Checkpoint(tmp_path, fp).save(state)  # 3 epochs done
    other = fingerprint(parse_train({"method": "margin", "optimizer": {"lr": 0.5}})[0], state.cfg.method_params(),
                        SPEC, manifest)
    assert other != fp
    assert fp == fingerprint(parse_train({"method": "margin", "embedding_dim": 8, "epochs": 9, "progress": True,
                                          "num_workers": 3})[0], state.cfg.method_params(), SPEC, manifest)
    with caplog.at_level(logging.WARNING, logger="deepmetric.training.callbacks"):
        fresh = make_state(bars)
        Checkpoint(tmp_path, other).on_fit_start(fresh)
        assert fresh.start_epoch == 0
        shorter = make_state(bars, epochs=2)
        Checkpoint(tmp_path, fp).on_fit_start(shorter)
        assert shorter.start_epoch == 0
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "made with other settings or data" in messages and "has 3 epochs, more than train.epochs=2" in messages


def test_checkpoint_waits_for_every_rank_after_writing(bars, tmp_path):
    state = make_state(bars)
    state.strategy = strategy = _Strategy()
    Checkpoint(tmp_path, "fp").on_epoch_end(state)
    assert strategy.calls == ["barrier"] and (tmp_path / CHECKPOINT).exists()


def test_callback_list_calls_each_hook_in_order(bars):
    seen: list[str] = []

    class Recorder(Callback):
        def __init__(self, name: str) -> None:
            self.name = name

        def on_fit_start(self, state):
            seen.append(f"{self.name}:fit_start")

        def on_epoch_start(self, state):
            seen.append(f"{self.name}:epoch_start")

        def on_step_end(self, state, stats):
            seen.append(f"{self.name}:step_end {stats['loss']}")

        def on_epoch_end(self, state):
            seen.append(f"{self.name}:epoch_end")

        def on_fit_end(self, state):
            seen.append(f"{self.name}:fit_end")

    state = make_state(bars)
    both = CallbackList([Recorder("a"), Recorder("b")])
    both.on_fit_start(state)
    both.on_epoch_start(state)
    both.on_step_end(state, {"loss": 1.0})
    both.on_epoch_end(state)
    both.on_fit_end(state)
    assert seen == ["a:fit_start", "b:fit_start", "a:epoch_start", "b:epoch_start", "a:step_end 1.0",
                    "b:step_end 1.0", "a:epoch_end", "b:epoch_end", "a:fit_end", "b:fit_end"]
    Callback().on_step_end(state, {})  # the base does nothing
