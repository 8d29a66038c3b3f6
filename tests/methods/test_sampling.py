"""Distance-weighted sampling (deepmetric.methods.sampling): negatives follow 1/q(d), per anchor, at any dimension."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from deepmetric.methods import METHODS
from deepmetric.methods.losses import MarginParams
from deepmetric.methods.sampling import DistanceWeightedSampler, distance_weighted_triplets

DIM = 512
NEG_DIST = [1.30, 1.32, 1.34, 1.36, 1.38]  # all below the 1.4 cut-off, weights within a factor ~e^6 of each other


def _log_inv_q(d: float, n: int = DIM) -> float:
    """log 1/q(d) from Wu et al. (2017), written out independently of the code under test."""
    return (2 - n) * math.log(d) - (n - 3) / 2 * math.log(1 - d * d / 4)


def _point_at(distance: float, axis: int) -> torch.Tensor:
    """A unit vector at `distance` from e_0, leaning towards e_axis."""
    cos = 1 - distance**2 / 2
    v = torch.zeros(DIM, dtype=torch.float64)
    v[0], v[axis] = cos, math.sqrt(1 - cos * cos)
    return v


def _one_anchor_batch(n_pos: int = 5):
    """Anchor e_0 with `n_pos` near positives and one negative (own class) at each distance of NEG_DIST."""
    rows = [_point_at(0.0, 1)] + [_point_at(0.2, 2 + i) for i in range(n_pos)]
    rows += [_point_at(d, 100 + i) for i, d in enumerate(NEG_DIST)]
    labels = torch.tensor([0] * (1 + n_pos) + list(range(1, 1 + len(NEG_DIST))))
    return torch.stack(rows).float(), labels, 1 + n_pos


def _negative_counts(sample) -> np.ndarray:
    emb, labels, first_neg = _one_anchor_batch()
    counts = np.zeros(len(NEG_DIST), dtype=np.int64)
    for _ in range(4000):  # 5 anchor-positive pairs per call: 20,000 draws for anchor 0
        a, _, n = sample(emb, labels)
        counts += np.bincount((n[a == 0] - first_neg).numpy(), minlength=len(NEG_DIST))
    return counts


def _chi2_pvalue(counts: np.ndarray) -> float:
    w = np.exp([_log_inv_q(d) - _log_inv_q(NEG_DIST[-1]) for d in NEG_DIST])
    expected = counts.sum() * w / w.sum()
    return float(stats.chisquare(counts, expected).pvalue)


def test_negatives_follow_the_inverse_sphere_density_at_512d():
    """Tolerance: a Pearson χ² test (4 degrees of freedom) against p(d) ∝ 1/q(d) must not reject at α = 0.001
    (a correct sampler fails this 1 time in 1,000 seeds; the seed is fixed, so the test is deterministic)."""
    torch.manual_seed(0)
    counts = _negative_counts(lambda e, y: distance_weighted_triplets(e, y, per="pair"))
    assert counts.sum() == 20_000
    assert _chi2_pvalue(counts) > 1e-3, counts
    # The same test has the power to reject a sampler that ignores the distance (uniform over negatives).
    uniform = np.full(len(NEG_DIST), 4000)
    assert _chi2_pvalue(uniform) < 1e-12


def test_every_anchor_keeps_its_triplets_at_512d_with_a_near_duplicate_class_pair():
    """16 classes × 4 at 512-d, classes 0 and 1 nearly identical (as the issue's measurement)."""
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(16, DIM, generator=g), dim=1)
    centres[1] = F.normalize(centres[0] + 0.01 * torch.randn(DIM, generator=g), dim=0)
    labels = torch.arange(16).repeat_interleave(4)
    emb = F.normalize(centres[labels] + 0.03 * torch.randn(64, DIM, generator=g), dim=1)
    torch.manual_seed(0)
    a, p, n = distance_weighted_triplets(emb, labels, per="pair")
    assert torch.equal(torch.bincount(a, minlength=64), torch.full((64,), 3))  # every anchor, one per positive
    assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all() and (a != p).all()
    a1, p1, n1 = distance_weighted_triplets(emb, labels, per="anchor")
    assert torch.equal(a1, torch.arange(64)) and (labels[a1] == labels[p1]).all() and (labels[a1] != labels[n1]).all()
    # pytorch-metric-learning's miner (one maximum over the whole batch) keeps only the two near-duplicate classes
    from pytorch_metric_learning.miners import DistanceWeightedMiner

    torch.manual_seed(0)
    kept = torch.unique(DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)(emb, labels)[0])
    assert len(kept) <= 8


def test_far_negatives_fall_back_to_uniform_and_missing_positives_skip_the_anchor():
    emb, labels, first_neg = _one_anchor_batch(n_pos=1)
    torch.manual_seed(0)
    # with the cut-off below every negative distance, each negative is equally likely (nothing is dropped)
    draws = torch.cat([distance_weighted_triplets(emb, labels, nonzero_loss_cutoff=1.0, per="anchor")[2][:1]
                       for _ in range(2000)])
    freq = np.bincount((draws - first_neg).numpy(), minlength=len(NEG_DIST)) / 2000
    assert np.abs(freq - 0.2).max() < 0.05  # 5σ of a binomial(2000, 0.2) frequency is 0.045
    # the negatives (singleton classes) have no positive: they are no anchors
    a, _, _ = distance_weighted_triplets(emb, labels)
    assert set(a.tolist()) == {0, 1}
    assert [len(t) for t in distance_weighted_triplets(emb[:2], labels[:2])] == [0, 0, 0]  # one class only


@pytest.mark.parametrize(("method", "per"), [("margin", "pair"), ("divide_conquer", "pair"), ("sharing", "anchor")])
def test_each_margin_method_uses_this_sampler_as_its_paper_does(method, per, tiny_backbone):
    params = METHODS[method].Params()
    m = METHODS[method](params, tiny_backbone(), 16, 8)
    assert isinstance(m.miner, DistanceWeightedSampler) and m.miner.per == per
    pml = METHODS["margin"](MarginParams(dw_impl="pml"), tiny_backbone(), 16, 8)
    assert type(pml.miner).__name__ == "DistanceWeightedMiner"
