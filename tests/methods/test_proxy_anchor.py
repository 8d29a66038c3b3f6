"""`proxy_anchor` (deepmetric.methods.proxy_anchor): one proxy per class, in a faster optimiser group."""

from __future__ import annotations

import torch

from deepmetric.methods import METHODS
from deepmetric.methods.proxy_anchor import ProxyAnchorParams


def test_proxies_per_class_in_their_own_faster_group(tiny_backbone):
    m = METHODS["proxy_anchor"](ProxyAnchorParams(proxy_lr_mult=50), tiny_backbone(), 8, 6)
    groups = {g["name"]: g for g in m.param_groups(1e-3, 1e-4)}
    assert list(groups) == ["backbone", "head", "proxies"]
    assert [p.shape for p in groups["proxies"]["params"]] == [(6, 8)]
    assert groups["proxies"]["lr"] == 50 * 1e-3 and groups["proxies"]["weight_decay"] == 0.0


def test_proxies_are_drawn_after_the_head(tiny_backbone):
    """The head's initial weights are those of a method without loss parameters (same random stream order)."""
    with_proxies = METHODS["proxy_anchor"](ProxyAnchorParams(), tiny_backbone(), 8, 6)
    plain = METHODS["contrastive"](METHODS["contrastive"].Params(), tiny_backbone(), 8, 6)
    torch.testing.assert_close(with_proxies.head.weight, plain.head.weight)


def test_loss_is_lower_for_embeddings_at_their_proxies(tiny_backbone):
    m = METHODS["proxy_anchor"](ProxyAnchorParams(), tiny_backbone(), 8, 3)
    proxies = m.criterion.proxies.detach()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    with torch.no_grad():
        assert float(m.loss(proxies[labels], labels)) < float(m.loss(proxies[labels.roll(1)], labels))
