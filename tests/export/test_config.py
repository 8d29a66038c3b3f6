"""The typed `export` parameters (deepmetric.export.config)."""

from __future__ import annotations

import pytest

from deepmetric.export.config import ExportParams


def test_params_are_validated():
    with pytest.raises(ValueError, match="tolerence"):
        from deepmetric.data.config import parse_params

        parse_params(ExportParams, {"tolerence": 1e-3}, "export")
    with pytest.raises(ValueError):
        ExportParams(exporter="jit")
