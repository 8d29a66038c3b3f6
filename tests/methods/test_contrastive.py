"""`contrastive` (deepmetric.methods.contrastive): PML's contrastive loss over every pair of the batch."""

from __future__ import annotations

import pytest

from deepmetric.methods import METHODS
from deepmetric.methods.contrastive import ContrastiveParams


def test_loss_is_zero_when_separated_and_both_margins_when_swapped(tiny_backbone, two_class_batch):
    emb, separated, swapped = two_class_batch
    m = METHODS["contrastive"](ContrastiveParams(), tiny_backbone(), 8, 2)
    assert m.miner is None and float(m.loss(emb, separated)) == 0.0
    # positive pairs at distance 2 (pos_margin 0): 2 each; negative pairs at 0 (neg_margin 1): 1 each, at 2: none;
    # PML averages each part over its non-zero pairs
    assert float(m.loss(emb, swapped)) == pytest.approx(2.0 + 1.0, abs=1e-5)
