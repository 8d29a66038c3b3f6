"""`multi_similarity` (deepmetric.methods.multi_similarity): PML's Multi-Similarity loss after its miner."""

from __future__ import annotations

import math

import pytest

from deepmetric.methods import METHODS
from deepmetric.methods.multi_similarity import MultiSimilarityParams


def test_miner_leaves_nothing_when_separated_and_the_loss_is_the_papers_when_swapped(tiny_backbone, two_class_batch):
    emb, separated, swapped = two_class_batch
    p = MultiSimilarityParams()
    m = METHODS["multi_similarity"](p, tiny_backbone(), 8, 2)
    assert float(m.loss(emb, separated)) == 0.0
    # per anchor: 1/α log(1 + e^{−α(S_p − λ)}) + 1/β log(1 + Σ_n e^{β(S_n − λ)}), S_p = −1, S_n ∈ {1, −1}, λ = base
    pos = math.log1p(math.exp(-p.alpha * (-1 - p.base))) / p.alpha
    neg = math.log1p(math.exp(p.beta * (1 - p.base)) + math.exp(p.beta * (-1 - p.base))) / p.beta
    assert float(m.loss(emb, swapped)) == pytest.approx(pos + neg, rel=1e-5)
