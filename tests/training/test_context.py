"""The context a method sees during training (`deepmetric.training.context.LoopContext`) and the sharded embedding
that validation and ``ctx.extract`` share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.data.dataset import ManifestImages
from deepmetric.data.transforms import augmentation
from deepmetric.evaluation.embed import embed_dataset, method_embedder
from deepmetric.models.preprocess import to_model_input
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.context import LoopContext, embed_sharded
from deepmetric.training.data import TrainLoader
from deepmetric.training.distributed import SingleProcess
from deepmetric.training.loop import make_optimizer
from deepmetric.training.model_io import build_method
from deepmetric.training.precision import Precision
from tests.fixtures import make_bars

SPEC = InputConfig(resize=32, crop=32)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    manifest = make_bars(root, lambda c: "train", num_classes=4, per_class=5, size=32)
    cfg, params = parse_train({"method": "margin", "embedding_dim": 8})
    torch.manual_seed(0)
    method = build_method(cfg, params, 4)
    images = ManifestImages(str(root), manifest["path"], SPEC)
    optimizer = make_optimizer(method, cfg)
    out = LoopContext(method=method, optimizer=optimizer, device=CPU, labels=manifest["label"].to_numpy(), seed=3,
                      epochs=1, loader=TrainLoader(images, augmentation(SPEC, cfg.augment), CPU), eval_images=images,
                      spec=SPEC, eval_batch_size=6, precision=Precision(CPU),
                      base_lrs={g["name"]: g["lr"] for g in optimizer.param_groups})
    yield out
    out.close()


def test_embed_sharded_in_one_process_is_the_whole_set_in_order(ctx):
    fn = method_embedder(ctx.method, SPEC.mean, SPEC.std)
    whole = embed_dataset(fn, ctx.eval_images, 4, CPU)
    np.testing.assert_array_equal(embed_sharded(SingleProcess(), fn, ctx.eval_images, 4, CPU), whole)
    assert whole.shape == (20, 8)


def test_extract_embeds_every_training_image_in_eval_mode(ctx):
    modes = []

    def fn(x):
        modes.append(ctx.method.training)
        return ctx.method.backbone(x)

    ctx.method.train()
    out = ctx.extract(fn, batch_size=7)
    assert out.shape[0] == 20 and modes == [False] * 3 and ctx.method.training
    ctx.method.eval()
    with torch.no_grad():
        ref = torch.cat([ctx.method.backbone(to_model_input(ctx.eval_images[i].unsqueeze(0), SPEC.mean, SPEC.std))
                         for i in range(20)])
    ctx.method.train()
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_load_gives_augmented_normalised_images_seeded_by_the_step(ctx):
    ctx.step = 5
    x, y = ctx.load([0, 6, 12])
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32 and y.tolist() == ctx.labels[[0, 6, 12]].tolist()
    assert torch.equal(ctx.load([0, 6, 12])[0], x)  # a resumed run loads the same pixels at the same step
    ctx.step = 6
    assert not torch.equal(ctx.load([0, 6, 12])[0], x)


def test_lr_scales_and_their_reset(ctx):
    ctx.reset_lr(0.5)
    base = dict(ctx.base_lrs)
    ctx.set_lr_scale("head", 0.0)
    lrs = {g["name"]: g["lr"] for g in ctx.optimizer.param_groups}
    assert lrs["head"] == 0.0 and lrs["backbone"] == base["backbone"] * 0.5
    ctx.reset_lr(1.0)
    assert {g["name"]: g["lr"] for g in ctx.optimizer.param_groups} == base
    with pytest.raises(KeyError, match=r"no optimiser group named 'masks'; groups: \['backbone', 'head'"):
        ctx.set_lr_scale("masks", 0.0)


def test_a_non_finite_loss_stops_the_run_naming_the_step(ctx):
    ctx.epoch, ctx.step = 2, 17
    with pytest.raises(FloatingPointError, match="loss is nan at epoch 2, step 17"):
        ctx.optimizer_step(torch.tensor(float("nan"), requires_grad=True))


def test_gather_in_one_process_is_the_batch_itself(ctx):
    x, y = torch.randn(4, 8), torch.arange(4)
    ctx.strategy.begin_step(3, 0, 0)
    gx, gy = ctx.gather(x, y)
    assert gx is x and gy is y
