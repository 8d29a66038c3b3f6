"""`margin` (deepmetric.methods.margin): margin loss + distance-weighted sampling, β in its own optimiser group."""

from __future__ import annotations

import pytest

from deepmetric.methods import METHODS
from deepmetric.methods.losses import MarginParams


def test_loss_is_zero_when_separated_and_the_hinges_mean_when_swapped(tiny_backbone, two_class_batch):
    emb, separated, swapped = two_class_batch
    m = METHODS["margin"](MarginParams(), tiny_backbone(), 8, 2)
    assert float(m.loss(emb, separated).detach()) == 0.0
    # the sampler picks the negative at 0 (the one at 2 lies beyond the 1.4 cut-off); positive at 2: 2 − β + γ = 1.0,
    # negative at 0: β + γ − 0 = 1.4 (β = 1.2, γ = 0.2); PML averages over the active hinge terms
    assert float(m.loss(emb, swapped).detach()) == pytest.approx((1.0 + 1.4) / 2, abs=1e-5)


def test_beta_is_a_group_of_its_own_only_when_learnt(tiny_backbone):
    m = METHODS["margin"](MarginParams(beta_lr=5e-4), tiny_backbone(), 8, 5)
    groups = {g["name"]: g for g in m.param_groups(1e-3, 1e-4)}
    assert list(groups) == ["backbone", "head", "loss"]
    assert groups["loss"]["lr"] == 5e-4 and groups["loss"]["weight_decay"] == 0.0
    assert [p.shape for p in groups["loss"]["params"]] == [(5,)]  # one β per class
    fixed = METHODS["margin"](MarginParams(learn_beta=False), tiny_backbone(), 8, 5)
    assert [g["name"] for g in fixed.param_groups(1e-3, 1e-4)] == ["backbone", "head"]
