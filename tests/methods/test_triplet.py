"""`triplet` (deepmetric.methods.triplet): PML's triplet margin loss with its miner's triplet type."""

from __future__ import annotations

import pytest

from deepmetric.methods import METHODS
from deepmetric.methods.triplet import TripletParams
from deepmetric.training.config import ParameterError, parse_train


def test_mining_type_reaches_the_miner_and_a_wrong_one_is_named(tiny_backbone):
    assert METHODS["triplet"](TripletParams(), tiny_backbone(), 8, 2).miner.type_of_triplets == "semihard"
    assert METHODS["triplet"](TripletParams(mining="hard"), tiny_backbone(), 8, 2).miner.type_of_triplets == "hard"
    with pytest.raises(ParameterError, match=r"train\.methods\.triplet\.mining"):
        parse_train({"method": "triplet", "methods": {"triplet": {"mining": "medium"}}})


def test_loss_is_zero_when_separated_and_d_ap_minus_d_an_plus_margin_when_swapped(tiny_backbone, two_class_batch):
    emb, separated, swapped = two_class_batch
    m = METHODS["triplet"](TripletParams(mining="all"), tiny_backbone(), 8, 2)
    assert float(m.loss(emb, separated)) == 0.0
    # each anchor: positive at 2, one negative at 0 (2 − 0 + 0.2) and one at 2 (2 − 2 + 0.2); mean of the two
    assert float(m.loss(emb, swapped)) == pytest.approx(((2.0 - 0.0 + 0.2) + (2.0 - 2.0 + 0.2)) / 2, abs=1e-5)
