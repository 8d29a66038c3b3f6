"""The built-in glyph set (`deepmetric.data.glyphs` renders it; the `glyphs` stage writes it to
``data/01_raw/glyphs/``): a dataset in CUB-200-2011's layout, read by the `cub` reader. Its size depends on the
`glyphs` parameters, so it has no published counts."""

from __future__ import annotations

from deepmetric.data.readers.base import DATASETS, DatasetInfo

DATASETS.add("glyphs", DatasetInfo(layout="cub", recall_ks=(1, 2, 4, 8)), kind="builtin", doc="docs/datasets.md")
