"""Distance-weighted sampling (Wu, Manmatha, Smola, Krähenbühl, *Sampling Matters in Deep Embedding Learning*,
ICCV 2017), written here to match the original and the seed papers' code rather than pytorch-metric-learning's
`DistanceWeightedMiner`.

On the unit sphere in n dimensions the distance d between two random points has density
q(d) ∝ d^(n−2) (1 − d²/4)^((n−3)/2). A negative is drawn for an anchor with probability ∝ 1/q(d) (distances
clamped below at `cutoff`), among the negatives closer than `nonzero_loss_cutoff` (farther ones give no margin-loss
gradient). Everything is done **per anchor in log space**: each anchor's log-weights are shifted by that anchor's
own maximum before exponentiating, so no anchor's weights underflow because another anchor has a near duplicate
(PML subtracts one maximum over the whole batch: at 512 dimensions that silently drops most anchors). An anchor
whose negatives are all beyond `nonzero_loss_cutoff` samples uniformly among its negatives (Wu et al.'s code; the
D&C code gives them weight ε) instead of being dropped, so every anchor with a positive forms triplets.

Triplets per anchor (`per`):
- ``"pair"`` — every (anchor, positive) pair gets one negative: Wu et al.'s code (`margin`) and, for P×K batches,
  the D&C TPAMI `DistanceWeightedSampler` (num_neg = mean positives per anchor);
- ``"anchor"`` — one uniformly random positive and one negative per anchor: the Sharing authors'
  `distanceweightedsampling` (`dml_shared_features`).
"""

from __future__ import annotations

from typing import Literal

import torch

Per = Literal["pair", "anchor"]


def inverse_sphere_log_density(dist: torch.Tensor, dim: int, cutoff: float) -> torch.Tensor:
    """log 1/q(d) (up to a constant) for distances between points on the unit sphere in `dim` dimensions, with
    d clamped to [cutoff, 2)."""
    d = dist.clamp(min=cutoff, max=2.0 - 1e-4)
    return (2.0 - dim) * torch.log(d) - ((dim - 3) / 2.0) * torch.log((1.0 - 0.25 * d * d).clamp(min=1e-12))


def negative_probabilities(
    log_weights: torch.Tensor, candidates: torch.Tensor, preferred: torch.Tensor | None = None
) -> torch.Tensor:
    """Row-wise sampling probabilities ∝ exp(log_weights) over `candidates` (bool mask), normalised per row in log
    space. Where `preferred` (a subset of the candidates, e.g. those within the non-zero-loss cut-off) is non-empty
    for a row, only those are used; a row without preferred entries samples uniformly among its candidates. Rows
    without any candidate are all zero."""
    keep = candidates if preferred is None else preferred & candidates
    logw = torch.where(keep, log_weights, torch.full_like(log_weights, -torch.inf))
    has = keep.any(dim=1, keepdim=True)
    row_max = torch.where(has, logw.max(dim=1, keepdim=True).values, torch.zeros_like(logw[:, :1]))
    probs = torch.exp(logw - row_max)  # each row's best negative has weight exactly 1: no row underflows
    uniform = candidates.to(probs.dtype)
    probs = torch.where(has, probs, uniform)
    total = probs.sum(dim=1, keepdim=True)
    return torch.where(total > 0, probs / total.clamp(min=1e-30), probs)


def distance_weighted_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    cutoff: float = 0.5,
    nonzero_loss_cutoff: float = 1.4,
    per: Per = "pair",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) index tensors for a batch of L2-normalised `embeddings`.

    `nonzero_loss_cutoff` ≥ 2 disables the upper cut-off (every negative is a candidate; Sharing's code). Uses the
    torch global generator unless `generator` is given (the training loop seeds it per epoch).
    """
    with torch.no_grad():
        x = embeddings.detach().float()
        n = x.shape[0]
        dist = torch.cdist(x, x)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        positive = same & ~eye
        negative = ~same
        logw = inverse_sphere_log_density(dist, x.shape[1], cutoff)
        near = dist < nonzero_loss_cutoff if nonzero_loss_cutoff < 2.0 else None
        probs = negative_probabilities(logw, negative, near).cpu()
        ok = (positive.any(1) & negative.any(1)).cpu()
        pos_cpu = positive.cpu()
        if per == "anchor":
            anchors = torch.nonzero(ok).flatten()
            if len(anchors) == 0:
                return _empty(x.device)
            positives = torch.multinomial(pos_cpu[anchors].float(), 1, generator=generator).flatten()
        elif per == "pair":
            pairs = torch.nonzero(pos_cpu & ok[:, None])
            if len(pairs) == 0:
                return _empty(x.device)
            anchors, positives = pairs[:, 0], pairs[:, 1]
        else:
            raise ValueError(f"unknown triplet mode {per!r}; choose 'pair' or 'anchor'")
        negatives = torch.multinomial(probs[anchors], 1, replacement=True, generator=generator).flatten()
        dev = embeddings.device
        return anchors.to(dev), positives.to(dev), negatives.to(dev)


def _empty(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e, e


class DistanceWeightedSampler:
    """A miner for pytorch-metric-learning losses: ``sampler(embeddings, labels)`` → triplet ``indices_tuple``."""

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, per: Per = "pair") -> None:
        if per not in ("pair", "anchor"):
            raise ValueError(f"unknown triplet mode {per!r}; choose 'pair' or 'anchor'")
        self.cutoff, self.nonzero_loss_cutoff, self.per = cutoff, nonzero_loss_cutoff, per

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return distance_weighted_triplets(embeddings, labels, self.cutoff, self.nonzero_loss_cutoff, self.per)

    def __repr__(self) -> str:
        return (f"DistanceWeightedSampler(cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}, "
                f"per={self.per!r})")
