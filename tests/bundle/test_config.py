"""`bundle:` parameters: defaults, bounds, unknown keys refused (the message names the key)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deepmetric.bundle.config import BundleParams, ThumbnailParams


def test_defaults():
    p = BundleParams()
    assert p.accepted_on is None and p.require == {} and p.release is None
    assert p.thumbnails == ThumbnailParams() and p.thumbnails.enabled and p.thumbnails.format == "webp"


@pytest.mark.parametrize(("block", "key"), [
    ({"requires": {"map@r": 0.5}}, "requires"),
    ({"thumbnails": {"size": 8}}, "thumbnails.size"),
    ({"thumbnails": {"format": "png"}}, "thumbnails.format"),
    ({"thumbnails": {"quality": 0}}, "thumbnails.quality"),
    ({"thumbnails": {"shard_items": 0}}, "thumbnails.shard_items"),
])
def test_bad_values_and_unknown_keys_are_refused(block, key):
    with pytest.raises(ValidationError) as e:
        BundleParams(**block)
    assert key in str(e.value)
