"""Ranked List Loss: the paper's value on a hand-computed batch, PML equality, gradients only on violations."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning.losses import RankedListLoss

from deepmetric.methods import METHODS
from deepmetric.methods.ranked_list import RankedListParams, ranked_list_loss


def _circle(degrees: list[float]) -> torch.Tensor:
    r = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(r), torch.sin(r)], dim=1)


def _chord(deg: float) -> float:
    return 2 * math.sin(math.radians(deg) / 2)


def test_paper_value_on_hand_computed_batch():
    # Five unit vectors: a 0°, b 60°, c 90°, e 180°, f 75°; classes a,b | c,e | f. α = 1.2, m = 0.4, T_n = 10.
    x = _circle([0, 60, 90, 180, 75])
    y = torch.tensor([0, 0, 1, 1, 2])
    alpha, m, tn = 1.2, 0.4, 10.0
    # Violating pairs by hand: positives beyond 0.8, negatives inside 1.2.
    #   a–b 60° = 1.0 (pos), c–e 90° = 1.414 (pos), b–c 30° = 0.518 (neg), b–f 15° = 0.261 (neg),
    #   c–f 15° = 0.261 (neg); a–f 75° = 1.218 and all other negatives are beyond α.
    pa = _chord(60) - (alpha - m)
    pc = _chord(90) - (alpha - m)
    v_bc, v_bf = alpha - _chord(30), alpha - _chord(15)

    def weighted(vs):
        ws = [math.exp(tn * v) for v in vs]
        return sum(w * v for w, v in zip(ws, vs)) / sum(ws)

    per_query = {
        "a": (pa + 0) / 2,
        "b": (pa + weighted([v_bc, v_bf])) / 2,
        "c": (pc + weighted([v_bc, v_bf])) / 2,  # c's negatives: b (30°) and f (15°)
        "e": (pc + 0) / 2,
        "f": (0 + weighted([v_bf, v_bf])) / 2,  # f has no positive; negatives b and c, both at 15°
    }
    expected = sum(per_query.values()) / 5
    got = ranked_list_loss(x, y, alpha=alpha, margin=m, t_n=tn)
    assert got.item() == pytest.approx(expected, abs=1e-9)
    # Caffe query weighting: each query weighted by its share of the raw pair weights.
    raw = {
        "a": 1.0,
        "b": 1.0 + math.exp(tn * v_bc) + math.exp(tn * v_bf),
        "c": 1.0 + math.exp(tn * v_bc) + math.exp(tn * v_bf),
        "e": 1.0,
        "f": 2 * math.exp(tn * v_bf),
    }
    total = sum(raw.values())
    expected_caffe = sum(per_query[k] * raw[k] / total for k in raw)
    got_caffe = ranked_list_loss(x, y, alpha=alpha, margin=m, t_n=tn, query_weighting="caffe")
    assert got_caffe.item() == pytest.approx(expected_caffe, abs=1e-9)


@pytest.mark.parametrize(("alpha", "margin", "tn", "lam"), [(1.2, 0.4, 10.0, 1.0), (1.4, 0.2, 5.0, 1.0),
                                                             (1.2, 0.4, 0.0, 3.0)])
def test_equals_pytorch_metric_learning(alpha, margin, tn, lam):
    # Where the formulations coincide (mean over queries, T_p = 0, λ/(1+λ) = PML's `imbalance`), the values agree;
    # PML adds 1e-5 per gallery item to each normaliser, hence the tolerance.
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(48, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 8, (48,), generator=g)
    pml = RankedListLoss(margin=margin, Tn=tn, imbalance=lam / (1 + lam), alpha=alpha, Tp=0)
    ours = ranked_list_loss(emb, y, alpha=alpha, margin=margin, t_n=tn, lam=lam)
    assert ours.item() == pytest.approx(pml(emb, y).item(), rel=1e-3)
    if tn == 0:
        # Constant weights: PML's gradient (it does not detach its weights) coincides too.
        e1 = emb.clone().requires_grad_(True)
        e2 = emb.clone().requires_grad_(True)
        ranked_list_loss(e1, y, alpha=alpha, margin=margin, t_n=tn, lam=lam).backward()
        pml(e2, y).backward()
        torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-3, atol=1e-6)


def test_only_violating_pairs_get_gradient():
    # a, b same class within α − m of each other; c another class far away: nothing violates → no gradient.
    x = _circle([0, 20, 180]).requires_grad_(True)
    y = torch.tensor([0, 0, 1])
    loss = ranked_list_loss(x, y, alpha=1.2, margin=0.4, t_n=10)
    assert loss.item() == 0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    # Add d at 100° (class 2) and e at 95° (class 1): d–e (5° apart) is a violating negative, c–e (85°, 1.35) a
    # violating positive; every pair involving a or b is beyond α (negatives) or inside α − m (a–b), so a and b
    # get no gradient.
    x2 = _circle([0, 20, 180, 100, 95]).requires_grad_(True)
    y2 = torch.tensor([0, 0, 1, 2, 1])
    ranked_list_loss(x2, y2, alpha=1.2, margin=0.4, t_n=10).backward()
    grad_norm = x2.grad.norm(dim=1)
    assert grad_norm[0] == 0 and grad_norm[1] == 0
    assert (grad_norm[2:] > 0).all()


def test_gradient_of_a_pair_is_the_unit_vector():
    # One violating positive pair (distance √2 > 0.8), N = 2 queries: each query's loss is 0.5·(d − 0.8), both
    # contain the pair, so each end's gradient is 2 × 0.5 × (1/2) × the unit vector (linear hinge, not squared).
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0])
    ranked_list_loss(a, y, alpha=1.2, margin=0.4, t_n=10, normalize=False).backward()
    u = (a[0] - a[1]).detach() / (a[0] - a[1]).detach().norm()
    torch.testing.assert_close(a.grad[0], u * 0.5, rtol=0, atol=1e-12)
    torch.testing.assert_close(a.grad[1], -u * 0.5, rtol=0, atol=1e-12)


def test_multi_level_heads_and_test_embedding(tiny_backbone):
    params = RankedListParams(multi_level=True)
    method = METHODS["ranked_list"](params, tiny_backbone(), 16, 5)
    x = torch.randn(6, 3, 32, 32)
    emb = method(x)
    assert emb.shape == (6, 48) and method.test_embedding_dim == 48
    torch.testing.assert_close(emb[:, :16].norm(dim=1), torch.ones(6))  # each head normalised on its own
    torch.testing.assert_close(method.embed(x).norm(dim=1), torch.ones(6))  # concatenation re-normalised
    loss = method.loss(emb, torch.tensor([0, 0, 1, 1, 2, 2]))
    loss.backward()
    assert all(p.grad is not None for p in method.aux.parameters())


def test_params_validation():
    with pytest.raises(ValueError, match="margin"):
        RankedListParams(alpha=0.3, margin=0.4)
    assert RankedListParams(tpami_boundaries=True, margin=0.4).effective_alpha == pytest.approx(1.2)
