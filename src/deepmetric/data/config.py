"""Typed parameters of the data side (``conf/base/parameters_ingest.yml``, key ``data``).

Pydantic models with ``extra="forbid"``: a misspelt key or a wrong value fails before any work starts, with
a message that names it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from deepmetric.data.contract import DATASETS
from deepmetric.data.images import (
    DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, ImageLimits,
)
from deepmetric.data.readers import LAYOUTS, crops_boxes, generic_layouts, resolve_layout

__all__ = ["CATALOGUE", "DataParams", "ParamsError", "SplitParams", "parse_params"]

log = logging.getLogger(__name__)

#: The name a catalogue read in a generic layout takes when ``data.dataset`` is left at the built-in set's name.
CATALOGUE = "catalogue"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class ParamsError(ValueError):
    """Invalid parameters; the message names each wrong key and why."""


def _fraction_or_count(v: float) -> float:
    if v >= 1 and v != int(v):
        raise ValueError(f"must be a fraction in [0, 1) or a whole number of classes, got {v}")
    return v


class SplitParams(BaseModel):
    """``data.split`` — how a catalogue given without a split is split by class (zero-shot, as the benchmarks)."""

    model_config = ConfigDict(extra="forbid")

    # Test classes: a fraction (0 < x < 1; each class whose seeded hash falls below it, so adding classes never
    # moves another one) or a count (exact, by hash order).
    test_classes: float = Field(default=0.5, gt=0)
    seed: int = 0

    @field_validator("test_classes")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        return _fraction_or_count(v)


class DataParams(BaseModel):
    """``data:`` — which dataset, where it is, and how ingest treats it."""

    model_config = ConfigDict(extra="forbid")

    # How the files lie: a name in LAYOUTS; None: the dataset's own. `folder` or `table` read your own images.
    layout: str | None = None
    # What they are: a name in DATASETS (docs/datasets.md); with a generic layout, any name for your catalogue.
    dataset: str = "glyphs"
    root: str = "data/01_raw/glyphs"
    # The table layout's CSV / Parquet file (a relative path is under `root`).
    table: str | None = None
    split: SplitParams = Field(default_factory=SplitParams)
    # Bounding boxes: crop (every stage crops each image to its box), full (boxes ignored), auto (crop for a
    # catalogue's boxes, whole images for the benchmarks, as their seed papers train).
    bbox: Literal["auto", "crop", "full"] = "auto"
    # Validation slice of the training classes for model selection: a fraction (0 < x < 1) of the train
    # classes, or a count (integer >= 0). The benchmarks' last training classes (by label) become `val`; a
    # catalogue's are drawn by the hash of their names (unless its folders or table give a `val` split).
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

    @property
    def layout_name(self) -> str:
        """The layout read: ``layout``, else the registered dataset's own."""
        return resolve_layout(self.dataset, self.layout)

    @property
    def crop_boxes(self) -> bool:
        """Whether ingest reads the bounding boxes (and so every later stage crops to them)."""
        return crops_boxes(self.bbox, self.layout_name)

    @field_validator("layout")
    @classmethod
    def _layout(cls, name: str | None) -> str | None:
        return None if name is None else LAYOUTS.check(name)

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str, info: ValidationInfo) -> str:
        if info.data.get("layout") in generic_layouts() and name not in DATASETS:
            if not _NAME.match(name):
                raise ValueError(f"a catalogue's name is letters, digits and _ . + - (at most 64), got {name!r}")
            return name
        if name not in DATASETS:
            raise ValueError(f"{DATASETS.unknown_message(name)}; for images of your own set data.layout to "
                             f"{' or '.join(generic_layouts())} (docs/datasets.md)")
        return name

    @field_validator("val_classes")
    @classmethod
    def _fraction_or_count(cls, v: float) -> float:
        return _fraction_or_count(v)

    @model_validator(mode="after")
    def _catalogue(self) -> DataParams:
        layout = self.layout_name
        if self.table is not None and layout != "table":
            raise ValueError(f"data.table is read by the table layout only (data.layout is {layout})")
        if layout == "table" and not self.table:
            raise ValueError("data.layout table needs data.table (a CSV or Parquet file; a relative path is under "
                             "data.root)")
        if self.layout and self.dataset in DATASETS and DATASETS.meta(self.dataset)["kind"] == "builtin" \
                and DATASETS[self.dataset].layout != self.layout:
            # the shipped default names a generated set that exists only in its own layout
            log.info("data.dataset %s is the built-in set; the images under %s read in the %s layout are named %r",
                     self.dataset, self.root, self.layout, CATALOGUE)
            self.dataset = CATALOGUE
        return self


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
            elif not err["loc"]:  # a rule across several keys: the message names them
                lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
            else:
                lines.append(f"  {loc} = {err.get('input')!r}: {err['msg']}")
        raise ParamsError(f"invalid parameters in `{key}` (conf/base/parameters_*.yml):\n" + "\n".join(lines)) from None

