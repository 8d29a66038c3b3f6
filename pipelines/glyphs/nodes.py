"""Thin node: ``glyphs`` parameters → rendered CUB-layout files."""

from __future__ import annotations

from typing import Any

from deepmetric.data.config import parse_params
from deepmetric.data.glyphs import GlyphParams, render_glyph_dataset


def render_glyphs(glyphs: dict[str, Any]) -> dict[str, bytes]:
    return render_glyph_dataset(parse_params(GlyphParams, glyphs, "glyphs"))
