"""Shared generated fixtures (importable as ``tests.fixtures`` or, with ``tests/`` on sys.path, ``fixtures``)."""

from __future__ import annotations

import os
from pathlib import Path


def make_tiny_glyphs(
    root: str | os.PathLike[str],
    num_classes: int = 12,
    image_size: int = 64,
    min_fonts: int = 8,
    jitter_copies: int = 0,
    seed: int = 0,
) -> Path:
    """Render a small built-in glyph dataset (CUB layout) into ``root`` and return ``root``.

    12 classes × ~16–22 fonts ≈ 250 PNGs of 64 px in well under a second. Deterministic.
    """
    from deepmetric.data.glyphs import GlyphParams, render_glyph_dataset

    root = Path(root)
    files = render_glyph_dataset(GlyphParams(num_classes=num_classes, image_size=image_size, min_fonts=min_fonts,
                                             jitter_copies=jitter_copies, seed=seed))
    for rel, data in files.items():
        dest = root.joinpath(*rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return root
