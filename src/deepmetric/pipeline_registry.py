"""Registers the stage pipelines kept in the top-level ``pipelines/`` package.

Kedro's ``find_pipelines()`` only looks inside ``src/<package>/pipelines``; deepmetric keeps one package per
stage at the top level (the design card's layout), so they are listed here explicitly, in chain order.
"""

from __future__ import annotations

import importlib

from kedro.pipeline import Pipeline

STAGES: tuple[str, ...] = ("glyphs", "ingest", "validate", "train", "evaluate", "export", "index", "bundle")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines: dict[str, Pipeline] = {}
    for name in STAGES:
        module = importlib.import_module(f"pipelines.{name}.pipeline")
        pipelines[name] = module.create_pipeline()
    # `kedro run` without --pipelines runs the chain from the dataset on (the built-in glyph render is
    # its own stage so that a user's dataset never triggers it).
    pipelines["__default__"] = sum(
        (pipelines[n] for n in STAGES if n != "glyphs"), start=Pipeline([])
    )
    return pipelines
