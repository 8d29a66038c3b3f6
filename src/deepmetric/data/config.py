"""Typed parameters of the data side (``conf/base/parameters_ingest.yml``, key ``data``).

Pydantic models with ``extra="forbid"``: a misspelt key or a wrong value fails before any work starts, with
a message that names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deepmetric.data.contract import DATASETS
from deepmetric.data.images import (
    DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, ImageLimits,
)

__all__ = ["DataParams", "ParamsError", "parse_params"]


class ParamsError(ValueError):
    """Invalid parameters; the message names each wrong key and why."""


class DataParams(BaseModel):
    """``data:`` — which dataset, where it is, and how ingest treats it."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = "glyphs"  # a name in DATASETS (docs/datasets.md)
    root: str = "data/01_raw/glyphs"
    # Validation slice of the training classes for model selection: a fraction (0 < x < 1) of the train
    # classes, or a count (integer >= 0). The last classes of the training split (by label) become `val`.
    val_classes: float = Field(default=0.1, ge=0)
    # What ingest does with an unreadable image: "fail" (stop, listing every bad file) or "drop" (warn,
    # leave it out and count it in data/08_reporting/ingest.json).
    bad_files: Literal["fail", "drop"] = "fail"
    # Images with more pixels than this are refused as decompression bombs (at most Pillow's own limit,
    # which it enforces first); also the limit on the transform's resized intermediate.
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, le=PILLOW_MAX_PIXELS)
    # Images whose longer side exceeds this many times the shorter one are refused (from the header, before
    # decoding): resizing a thin image's short side up would create an intermediate of unbounded size.
    max_aspect_ratio: float = Field(default=DEFAULT_MAX_ASPECT_RATIO, ge=1)
    # Parallel decode workers for ingest (0: one per CPU core).
    workers: int = Field(default=0, ge=0)

    @property
    def limits(self) -> ImageLimits:
        """``max_pixels`` and ``max_aspect_ratio`` as the one object every image reader takes (``limits=``)."""
        return ImageLimits(self.max_pixels, self.max_aspect_ratio)

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str) -> str:
        return DATASETS.check(name)

    @field_validator("val_classes")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        if v >= 1 and v != int(v):
            raise ValueError(f"must be a fraction in [0, 1) or a whole number of classes, got {v}")
        return v


def parse_params(model: type[BaseModel], params: Mapping[str, Any] | BaseModel | None, key: str) -> Any:
    """Validate ``params`` (the ``key:`` block of the parameters) into ``model``, or raise
    :class:`ParamsError` naming every wrong entry as ``key.field``."""
    if isinstance(params, model):
        return params
    if isinstance(params, BaseModel):
        params = params.model_dump()
    try:
        return model.model_validate(dict(params or {}))
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(p) for p in (key, *err["loc"]))
            if err["type"] == "extra_forbidden":
                lines.append(f"  {loc}: unknown parameter (allowed: {', '.join(model.model_fields)})")
            else:
                lines.append(f"  {loc} = {err.get('input')!r}: {err['msg']}")
        raise ParamsError(f"invalid parameters in `{key}` (conf/base/parameters_*.yml):\n" + "\n".join(lines)) from None

