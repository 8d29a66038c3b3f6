"""deepmetric.index.config: the index stage's parameters, refused by name when unknown."""

from __future__ import annotations

import pytest

from deepmetric.data.config import parse_params
from deepmetric.index.config import IndexParams


def test_params_reject_unknown_keys():
    with pytest.raises(ValueError, match="index.nprobe"):
        parse_params(IndexParams, {"factory": "Flat", "nprobe": 3}, "index")
    with pytest.raises(ValueError, match="efsearch"):
        parse_params(IndexParams, {"search": {"efsearch": 3}}, "index")
