"""The training loop on a small generated dataset: learning, resume, model selection, bad parameters."""

from __future__ import annotations

import pytest
import torch

from deepmetric.data.images import ImageDecodeError, ImageLimits
from deepmetric.training.callbacks import CHECKPOINT, Callback
from deepmetric.training.config import InputConfig, ParameterError, parse_train
from deepmetric.training.loop import fit
from deepmetric.training.model_io import load_model
from tests.fixtures import make_bars, one_torch_thread


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """12 classes of coloured bars, 6 images each: 6 train, 2 val, 4 test classes."""
    root = tmp_path_factory.mktemp("shapes")
    manifest = make_bars(root, lambda c: "train" if c < 6 else ("val" if c < 8 else "test"))
    return str(root), manifest


def _cfg(**over):
    base = {"method": "margin", "epochs": 2, "steps_per_epoch": 2, "embedding_dim": 16, "progress": False,
            "batch": {"classes_per_batch": 4, "samples_per_class": 3}, "eval_batch_size": 32}
    base.update(over)
    return parse_train(base)


SPEC = InputConfig(resize=32, crop=32)


def test_resume_continues_exactly_where_it_stopped(shapes, tmp_path):
    root, manifest = shapes
    cfg2, params = _cfg(epochs=2)
    straight = fit(manifest, root, cfg2, params, SPEC, checkpoint_dir=tmp_path / "a")
    # "Interrupted" after epoch 1: a checkpoint of one epoch, then a rerun asking for two.
    cfg1, _ = _cfg(epochs=1)
    first = fit(manifest, root, cfg1, params, SPEC, checkpoint_dir=tmp_path / "b")
    assert first.resumed_from == 0 and (tmp_path / "b" / CHECKPOINT).exists()
    resumed = fit(manifest, root, cfg2, params, SPEC, checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from == 1
    assert [r["epoch"] for r in resumed.log] == [1, 2]
    a, b = straight.payload["state_dict"], resumed.payload["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"{k} differs after resume")


def test_changed_settings_start_fresh(shapes, tmp_path):
    root, manifest = shapes
    cfg, params = _cfg(epochs=1)
    fit(manifest, root, cfg, params, SPEC, checkpoint_dir=tmp_path)
    cfg_lr, _ = _cfg(epochs=1, optimizer={"lr": 0.01})
    again = fit(manifest, root, cfg_lr, params, SPEC, checkpoint_dir=tmp_path)
    assert again.resumed_from == 0


def test_best_epoch_and_model_file_round_trip(shapes):
    root, manifest = shapes
    cfg, params = _cfg(epochs=2)
    res = fit(manifest, root, cfg, params, SPEC)
    assert 1 <= res.payload["best_epoch"] <= 2
    assert {"val_map@r", "val_recall@1", "loss", "images_per_s"} <= set(res.log[0])
    assert "epoch,loss" in res.log_csv().splitlines()[0]
    method, spec = load_model(res.payload)
    assert spec == SPEC
    x = torch.randn(2, 3, 32, 32)
    emb = method.embed(x)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_training_improves_validation_map(shapes):
    root, manifest = shapes
    cfg, params = _cfg(epochs=4, steps_per_epoch=6, optimizer={"lr": 0.003})
    with one_torch_thread():  # the same float sums whatever ran before it or the machine's core count
        res = fit(manifest, root, cfg, params, SPEC)
    maps = [r["val_map@r"] for r in res.log]
    assert max(maps[1:]) > maps[0] or maps[0] > 0.9


def test_fit_calls_its_callbacks_around_epochs_and_steps_after_the_built_in_ones(shapes):
    root, manifest = shapes
    seen = []

    class Recorder(Callback):
        def on_fit_start(self, state):
            seen.append("fit_start")

        def on_epoch_start(self, state):
            seen.append(f"epoch_start {state.ctx.epoch}")

        def on_step_end(self, state, stats):
            seen.append(f"step {state.ctx.step} {'loss' in stats}")

        def on_epoch_end(self, state):  # validation and the best epoch are in the row already
            seen.append(f"epoch_end {state.row['epoch']} {state.row['best_epoch']} {'val_map@r' in state.row}")

        def on_fit_end(self, state):
            seen.append(f"fit_end {len(state.log)}")

    cfg, params = _cfg(epochs=2)
    res = fit(manifest, root, cfg, params, SPEC, callbacks=[Recorder()])
    assert seen == ["fit_start", "epoch_start 0", "step 1 True", "step 2 True", "epoch_end 1 1 True",
                    "epoch_start 1", "step 3 True", "step 4 True", f"epoch_end 2 {res.log[1]['best_epoch']} True",
                    "fit_end 2"]


def test_the_image_limits_apply_to_the_training_images(shapes):
    root, manifest = shapes
    cfg, params = _cfg(epochs=1, num_workers=0)
    with pytest.raises(ImageDecodeError, match=r"c\d\d/\d\.png: .*36x36 = 1,296 pixels exceeds the limit of 1,000 "
                                                r"\(parameter max_pixels\)"):
        fit(manifest, root, cfg, params, SPEC, limits=ImageLimits(max_pixels=1000))


def test_too_few_classes_for_batch(shapes):
    root, manifest = shapes
    cfg, params = _cfg(batch={"classes_per_batch": 10, "samples_per_class": 2})
    with pytest.raises(ValueError, match="training split has 6"):
        fit(manifest, root, cfg, params, SPEC)


def test_group_lr_sets_absolute_rates_and_names_an_unknown_group():
    from deepmetric.training.loop import make_optimizer
    from deepmetric.training.model_io import build_method

    cfg, params = parse_train({"method": "divide_conquer", "embedding_dim": 16,
                               "optimizer": {"lr": 1e-3, "group_lr": {"head": 2e-4}}})
    opt = make_optimizer(build_method(cfg, params, 6), cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"backbone": 1e-3, "head": 2e-4, "masks": 1e-3}  # masks: the method's absolute default
    cfg, params = parse_train({"method": "margin", "embedding_dim": 16, "optimizer": {"group_lr": {"mask": 1e-3}}})
    with pytest.raises(ParameterError, match=r"train\.optimizer\.group_lr.*\['mask'\].*backbone"):
        make_optimizer(build_method(cfg, params, 6), cfg)
