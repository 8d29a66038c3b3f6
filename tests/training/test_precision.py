"""Precision and speed knobs: bf16 autocast of the backbone (losses in float32), every method trains under bf16
without NaNs, fp16 refused on the CPU, channels_last and torch.compile (gcc) on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepmetric.methods import METHODS
from deepmetric.models.backbones import BackboneConfig, build_backbone
from deepmetric.training.precision import Precision
from tests.methods.conftest import SimpleContext, _one_torch_thread  # noqa: F401 (autouse: one torch thread)

CPU = torch.device("cpu")
BLOCKS = {"divide_conquer": {"num_clusters": 2, "kmeans_niter": 5, "kmeans_nredo": 1}, "intra_batch": {"mpn_heads": 2}}


def _method(name: str, precision: Precision | None = None, num_classes: int = 4):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet18", **METHODS[name].backbone_options(METHODS[name].Params())))
    m = METHODS[name](METHODS[name].Params(**BLOCKS.get(name, {})), backbone, 16, num_classes)
    if precision is not None:
        precision.prepare(m)
    return m


def _batch(n_classes=4, per_class=4, size=32):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.randn(len(labels), 3, size, size, generator=g) + labels.view(-1, 1, 1, 1) * 0.3
    return x, labels


def test_bf16_autocast_covers_the_backbone_and_returns_float32():
    m = _method("margin", Precision(CPU, "bf16"))
    seen = []
    m.backbone.stem[0].register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    x, _ = _batch()
    out = m(x)
    assert seen == [torch.bfloat16]
    assert out.dtype == torch.float32  # heads and losses run in float32


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_takes_finite_bf16_steps(name):
    m = _method(name, Precision(CPU, "bf16"))
    x, labels = _batch(per_class=3, size=24)
    ctx = SimpleContext(m, x, labels.numpy(), lr=1e-3)
    m.train()
    if name == "divide_conquer":
        m.on_epoch_start(ctx)
    for _ in range(2):
        images = torch.cat([x, x]) if name == "sharing" else x  # sharing: class batch + surrogate batch
        lab = torch.cat([labels, labels]) if name == "sharing" else labels
        stats = m.training_step(images, lab, ctx)
        ctx.step += 1
        assert all(np.isfinite(v) for v in stats.values()), stats
    assert all(torch.isfinite(p).all() for p in m.parameters())


def test_fp16_needs_cuda():
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        Precision(CPU, "fp16")


def test_channels_last_gives_the_same_embeddings():
    x, _ = _batch()
    plain = _method("margin").eval()
    nhwc = _method("margin", Precision(CPU, "fp32", channels_last=True)).eval()
    assert nhwc.backbone.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(nhwc(x), plain(x), atol=1e-4, rtol=1e-4)
    assert nhwc.state_dict().keys() == plain.state_dict().keys()


def test_compile_is_applied_in_place():
    m = _method("margin", Precision(CPU, "fp32", compile=True))
    assert m.backbone._compiled_call_impl is not None  # nn.Module.compile: keys and attributes unchanged
    assert all(not k.startswith("_orig_mod") for k in m.state_dict())


@pytest.mark.slow  # inductor + gcc compile of a ResNet-18: minutes on 2 cores
def test_compiled_backbone_trains_and_keeps_its_state_dict_keys():
    """torch.compile on the CPU (inductor with gcc): same keys, same forward, and a training step runs."""
    x, labels = _batch(per_class=2, size=32)
    plain = _method("margin").eval()
    m = _method("margin", Precision(CPU, "fp32", compile=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(m(x), plain(x), atol=1e-4, rtol=1e-4)
    assert m.state_dict().keys() == plain.state_dict().keys()
    m.train()
    ctx = SimpleContext(m, x, labels.numpy())
    stats = m.training_step(x, labels, ctx)
    assert np.isfinite(stats["loss"])
