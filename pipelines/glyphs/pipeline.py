from kedro.pipeline import Pipeline, node

from pipelines.glyphs.nodes import render_glyphs


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([node(render_glyphs, "params:glyphs", "glyph_images", name="render_glyphs")])
