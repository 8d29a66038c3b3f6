"""Intra-batch connections: training-only MPN, batch-independent test embedding, attention-free export graph."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from deepmetric.methods import METHODS
from deepmetric.methods.base import BatchConfig
from deepmetric.methods.intra_batch import IntraBatchParams, number_sampler_factorisations, smoothed_ce


def _method(tiny_backbone, **kw):
    torch.manual_seed(0)
    return METHODS["intra_batch"](IntraBatchParams(**kw), tiny_backbone(pool="max"), 32, 6)


def _onnx_graph(module: torch.nn.Module, tmp_path, name: str) -> onnx.GraphProto:
    path = tmp_path / f"{name}.onnx"
    module.eval()
    torch.onnx.export(
        module, (torch.randn(2, 3, 32, 32),), str(path), input_names=["x"], output_names=["emb"],
        dynamic_axes={"x": {0: "batch"}, "emb": {0: "batch"}}, dynamo=False, opset_version=17,
    )
    return onnx.load(str(path)).graph


def test_export_graph_holds_no_attention(tiny_backbone, tmp_path):
    method = _method(tiny_backbone)
    export = method.export_module()
    assert not any("mpn" in n or "attention" in n for n, _ in export.named_modules())
    graph = _onnx_graph(export, tmp_path, "export")
    ops = {node.op_type for node in graph.node}
    assert "Softmax" not in ops and "LayerNormalization" not in ops
    assert not any("mpn" in node.name or "attention" in node.name for node in graph.node)
    assert not any("mpn" in init.name for init in graph.initializer)
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch

    # The inspection does find attention when a graph holds it (guards against a vacuous check).
    class WithMPN(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.mpn(self.m.head(self.m.backbone(x)))

    ops_mpn = {node.op_type for node in _onnx_graph(WithMPN(method), tmp_path, "mpn").node}
    assert "Softmax" in ops_mpn


def test_mpn_depends_on_batch_but_test_embedding_does_not(tiny_backbone):
    method = _method(tiny_backbone).eval()  # dropout off, BatchNorm on running statistics
    x = torch.randn(5, 3, 32, 32)
    x2 = x.clone()
    x2[4] = torch.randn(3, 32, 32)  # change one batch member
    with torch.no_grad():
        f, f2 = method(x), method(x2)
        m, m2 = method.mpn(torch.nn.functional.normalize(f, dim=-1)), method.mpn(torch.nn.functional.normalize(f2, dim=-1))
        e, e2 = method.embed(x), method.embed(x2)
    assert not torch.allclose(m[:4], m2[:4], atol=1e-6)  # the others' refined embeddings moved
    torch.testing.assert_close(e[:4], e2[:4])  # the test embedding of the others did not
    torch.testing.assert_close(e, method.export_module()(x))
    torch.testing.assert_close(e.norm(dim=1), torch.ones(5))


def test_label_smoothed_temperature_ce_value():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    y = torch.tensor([0, 2])
    tau, eps = 0.2, 0.1
    expected = 0.0
    for row, t in zip(logits.tolist(), y.tolist()):
        z = [v / tau for v in row]
        lse = math.log(sum(math.exp(v) for v in z))
        logp = [v - lse for v in z]
        target = [(1 - eps) * (i == t) + eps / 3 for i in range(3)]
        expected += -sum(q * lp for q, lp in zip(target, logp))
    expected /= 2
    assert smoothed_ce(logits, y, tau, eps).item() == pytest.approx(expected, rel=1e-6)


def test_training_step_supervises_both_heads(tiny_backbone, simple_context):
    method = _method(tiny_backbone)
    images = torch.randn(12, 3, 32, 32)
    labels = np.repeat(np.arange(6), 2)
    ctx = simple_context(method, images, labels)
    method.train()
    x, y = ctx.load(range(12))
    losses = method.training_losses(method(x), y)
    assert losses["loss"].item() == pytest.approx(losses["ce_backbone"].item() + losses["ce_mpn"].item(), rel=1e-6)
    losses["loss"].backward()
    for part in (method.classifier, method.mpn, method.mpn_classifier, method.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters() if p.requires_grad)
    assert method.mpn_neck.bias.grad is None  # BN-neck bias frozen
    out = method.training_step(x, y, ctx)
    assert set(out) == {"loss", "ce_backbone", "ce_mpn"} and ctx.steps_taken == 1


def test_number_sampler_redraws_the_factorisation():
    assert number_sampler_factorisations(54, 100) == [(2, 27), (3, 18), (6, 9), (9, 6), (18, 3), (27, 2)]
    assert number_sampler_factorisations(54, 10) == [(2, 27), (3, 18), (6, 9), (9, 6)]
    labels = np.repeat(np.arange(30), 30)
    method = METHODS["intra_batch"](IntraBatchParams(number_sampler=True), _tiny_for_sampler(), 8, 30)
    seen = set()
    for seed in range(12):
        batches = list(method.batch_sampler(labels, BatchConfig(classes_per_batch=6, samples_per_class=9), seed, 2))
        assert all(len(b) == 54 for b in batches)
        counts = np.unique(np.bincount(labels[batches[0]])[np.bincount(labels[batches[0]]) > 0])
        assert len(counts) == 1  # N classes × P samples each
        seen.add(int(counts[0]))
    assert len(seen) > 1


def _tiny_for_sampler():
    from deepmetric.models.backbones import BackboneConfig, build_backbone

    return build_backbone(BackboneConfig(name="resnet18", pool="max"))
