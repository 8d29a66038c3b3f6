"""Sharing Matters: shared triplets across classes, gradient reversal, two optimiser steps per iteration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepmetric.methods import METHODS
from deepmetric.methods.base import BatchConfig
from deepmetric.methods.sharing import AdversarialDecorrelation, SharingParams, shared_triplets, surrogate_batch


def test_surrogate_groups_hold_distinct_classes():
    labels = np.repeat(np.arange(10), 6)
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = surrogate_batch(labels, 32, 4, rng)
        assert len(batch) == 32
        for g in range(8):
            assert len(set(labels[batch[4 * g : 4 * g + 4]])) == 4


def test_shared_positives_never_share_the_anchor_class_and_negatives_exclude_it():
    g = torch.Generator().manual_seed(0)
    # a batch where groups *could* hold same-class images (the sampler forbids it; the triplets must too)
    classes = torch.randint(0, 5, (40,), generator=g)
    surrogate = torch.arange(40) // 4
    emb = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    seen_neg = set()
    for _ in range(50):
        a, p, n = shared_triplets(emb, classes, surrogate, generator=g)
        assert len(a) > 0
        assert (classes[a] != classes[p]).all()  # positives: other classes…
        assert (surrogate[a] == surrogate[p]).all()  # …of the anchor's surrogate group
        assert (classes[a] != classes[n]).all()  # negatives exclude the anchor's class
        assert (surrogate[a] != surrogate[n]).all()  # and its surrogate label
        seen_neg.update(n.tolist())
    assert len(seen_neg) > 10  # sampled, not a fixed choice
    # an anchor whose group holds only its own class has no shared positive: skipped
    classes2 = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])
    a, p, n = shared_triplets(emb[:8], classes2, torch.arange(8) // 2, generator=g)
    assert 0 not in a.tolist() and 1 not in a.tolist()


def test_gradient_reversal_flips_the_sign_for_the_encoders_only():
    torch.manual_seed(0)
    adv = AdversarialDecorrelation(8, 6, 16)
    c = F.normalize(torch.randn(5, 6), dim=-1).requires_grad_(True)
    s = F.normalize(torch.randn(5, 8), dim=-1).requires_grad_(True)
    adv(c, s).backward()
    # reference: the same objective (−similarity) without gradient reversal
    c2, s2 = c.detach().clone().requires_grad_(True), s.detach().clone().requires_grad_(True)
    params = list(adv.regressor.parameters())
    ref = torch.autograd.grad(-adv.similarity(c2, s2), [c2, s2, *params])
    torch.testing.assert_close(c.grad, -ref[0])  # encoders: flipped → they minimise the similarity
    torch.testing.assert_close(s.grad, -ref[1])
    for p, r in zip(params, ref[2:]):
        torch.testing.assert_close(p.grad, r)  # regressor: normal gradient → it maximises the similarity
    # one regressor step raises the similarity; one encoder step (through the reversal) lowers it
    before = adv.similarity(c, s).item()
    with torch.no_grad():
        for p in params:
            p -= 0.5 * p.grad
    assert adv.similarity(c, s).item() > before
    with torch.no_grad():
        after_enc = adv.similarity(c - 0.5 * c.grad, s - 0.5 * s.grad).item()
    assert after_enc < adv.similarity(c, s).item()


def test_two_forward_passes_and_two_optimizer_steps(tiny_backbone, simple_context):
    labels = np.repeat(np.arange(8), 4)
    images = torch.randn(len(labels), 3, 32, 32)
    method = METHODS["sharing"](SharingParams(), tiny_backbone(frozen_bn=True), 16, 8)
    ctx = simple_context(method, images, labels)
    batch = BatchConfig(classes_per_batch=4, samples_per_class=2)
    batches = list(method.batch_sampler(labels, batch, 0, 3))
    assert all(len(b) == 16 for b in batches)
    first = batches[0]
    assert sorted(np.bincount(labels[first[:8]])[np.bincount(labels[first[:8]]) > 0]) == [2, 2, 2, 2]  # P × K
    for gstart in (8, 12):
        assert len(set(labels[first[gstart : gstart + 4]])) == 4  # surrogate groups: distinct classes
    method.train()
    x, y = ctx.load(first)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    stats = method.training_step(x, y, ctx)
    assert ctx.steps_taken == 2
    assert {"margin", "adv", "shared", "adv_shared", "loss"} <= set(stats)
    after = method.state_dict()
    assert not torch.equal(before["shared_head.weight"], after["shared_head.weight"])
    # frozen BatchNorm: running statistics unchanged by training
    assert torch.equal(before["backbone.stem.1.running_mean"], after["backbone.stem.1.running_mean"])


def test_test_embedding_is_the_class_embedding(tiny_backbone):
    method = METHODS["sharing"](SharingParams(), tiny_backbone(frozen_bn=True), 16, 8).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        c, s = method.embeddings(x)
        torch.testing.assert_close(method.embed(x), c)
    concat = METHODS["sharing"](SharingParams(test_embedding="concat"), tiny_backbone(frozen_bn=True), 16, 8).eval()
    with torch.no_grad():
        assert concat.embed(x).shape == (3, 16 + 128) and concat.test_embedding_dim == 144
        torch.testing.assert_close(concat.embed(x).norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError):
        SharingParams(group_size=1)
