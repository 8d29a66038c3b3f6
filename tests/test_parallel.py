"""Contiguous, batch-aligned shards (`deepmetric.parallel`): every item exactly once, in order."""

from __future__ import annotations

import pytest

from deepmetric.parallel import batch_shards, shard_bounds


@pytest.mark.parametrize("n,shards", [(0, 3), (1, 4), (10, 3), (12, 4), (7, 7), (5, 8)])
def test_shard_bounds_cover_every_item_once_in_order(n, shards):
    bounds = [shard_bounds(n, shards, i) for i in range(shards)]
    assert [i for a, b in bounds for i in range(a, b)] == list(range(n))
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n,batch,shards", [(36, 8, 8), (100, 64, 3), (64, 64, 2), (5, 2, 9)])
def test_batch_shards_cut_on_batch_boundaries(n, batch, shards):
    ranges = batch_shards(n, batch, shards)
    assert [i for a, b in ranges for i in range(a, b)] == list(range(n))
    assert all(a % batch == 0 and b > a for a, b in ranges)
    assert all(b % batch == 0 for _, b in ranges[:-1])


def test_bad_shard_is_refused():
    with pytest.raises(ValueError, match="shard 3 of 3"):
        shard_bounds(10, 3, 3)
