"""Shared loss pieces (deepmetric.methods.losses): the margin loss and miner factories, MarginParams' β group, and
PMLLossMethod (normalise, then one PML loss and optional miner)."""

from __future__ import annotations

import pytest
import torch

from deepmetric.methods.losses import MarginParams, PMLLossMethod, distance_weighted_miner, margin_loss
from deepmetric.methods.sampling import DistanceWeightedSampler


def test_margin_loss_learns_one_beta_per_class_or_keeps_one_fixed():
    learnt = margin_loss(MarginParams(beta=1.1), num_classes=7)
    (beta,) = list(learnt.parameters())
    assert beta.shape == (7,) and torch.allclose(beta, torch.full((7,), 1.1))
    assert list(margin_loss(MarginParams(learn_beta=False), num_classes=7).parameters()) == []
    assert [p.numel() for p in margin_loss(MarginParams(), num_classes=None).parameters()] == [1]


def test_distance_weighted_miner_is_this_projects_sampler_unless_pml_is_asked_for():
    ours = distance_weighted_miner(MarginParams(dw_cutoff=0.6, dw_nonzero_loss_cutoff=1.3, dw_triplets="anchor"))
    assert isinstance(ours, DistanceWeightedSampler) and ours.per == "anchor"
    pml = distance_weighted_miner(MarginParams(dw_impl="pml", dw_cutoff=0.6))
    assert type(pml).__name__ == "DistanceWeightedMiner" and pml.cutoff == 0.6


def test_beta_group_has_its_absolute_lr_and_no_weight_decay():
    beta = [torch.nn.Parameter(torch.ones(3))]
    assert MarginParams().loss_group(beta, 1e-3) == [{"name": "loss", "params": beta, "lr": 1e-3, "weight_decay": 0.0}]
    assert MarginParams(beta_lr=5e-4).loss_group(beta, 1e-3)[0]["lr"] == 5e-4
    assert MarginParams(beta_lr=5e-4).loss_group([], 1e-3) == []


class _Recording(torch.nn.Module):
    """A 'loss' that returns what it was given, to see what PMLLossMethod passes on."""

    def forward(self, emb, labels, indices=None):
        self.seen = (emb, labels, indices)
        return emb.sum()


def test_pml_loss_method_normalises_and_passes_the_miners_tuples(tiny_backbone):
    class WithMiner(PMLLossMethod):
        def build_loss(self, params):
            return _Recording(), lambda emb, labels: ("mined", emb.shape[0])

    class Plain(PMLLossMethod):
        def build_loss(self, params):
            return _Recording(), None

    emb, labels = torch.tensor([[3.0, 4.0], [0.0, -2.0]]), torch.tensor([0, 1])
    m = WithMiner(MarginParams(), tiny_backbone(), 8, 2)
    m.loss(emb, labels)
    torch.testing.assert_close(m.criterion.seen[0], torch.tensor([[0.6, 0.8], [0.0, -1.0]]))
    assert m.criterion.seen[2] == ("mined", 2)
    p = Plain(MarginParams(), tiny_backbone(), 8, 2)
    p.loss(emb, labels)
    assert p.miner is None and p.criterion.seen[2] is None


def test_a_method_without_its_loss_says_so(tiny_backbone):
    with pytest.raises(NotImplementedError, match="builds no loss"):
        PMLLossMethod(MarginParams(), tiny_backbone(), 8, 2)
