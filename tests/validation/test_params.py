"""The `validate:` parameters (deepmetric.validation.params): bounds checked against each other, unknown and
out-of-range parameters named."""

from __future__ import annotations

import pytest

from deepmetric.validation import ValidateParams


def test_params_are_checked():
    with pytest.raises(ValueError, match="min_width"):
        ValidateParams(min_width=100, max_width=10)
    from deepmetric.data.config import ParamsError, parse_params

    with pytest.raises(ParamsError, match=r"validate.min_widht: unknown parameter"):
        parse_params(ValidateParams, {"min_widht": 3}, "validate")
    with pytest.raises(ParamsError, match=r"validate.max_examples = 0"):
        parse_params(ValidateParams, {"max_examples": 0}, "validate")
