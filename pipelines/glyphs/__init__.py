"""Stage `glyphs`: render the built-in glyph dataset."""
