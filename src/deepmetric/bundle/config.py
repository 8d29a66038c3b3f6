"""`bundle:` parameters (conf/base/parameters_bundle.yml): what goes into the manifest and when a model may ship."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BundleParams", "ThumbnailParams"]


class ThumbnailParams(BaseModel):
    """`bundle.thumbnails:` — small gallery images in the bundle, shown by the search page at `/`."""

    model_config = ConfigDict(extra="forbid")

    # false: no thumbnails (very large galleries); the page then shows ids and class names only.
    enabled: bool = True
    size: int = Field(96, ge=16, le=512, description="longest side in pixels (aspect ratio kept, never enlarged)")
    format: Literal["webp", "jpeg"] = "webp"
    quality: int = Field(80, ge=1, le=100)
    shard_items: int = Field(50_000, gt=0, description="thumbnails per parquet shard")


class BundleParams(BaseModel):
    """`bundle:` — what goes into data/09_deploy/bundle/manifest.json and when a model may ship."""

    model_config = ConfigDict(extra="forbid")

    # metrics.json keys recorded under `accepted_on` (null: every numeric entry).
    accepted_on: list[str] | None = None
    # Minimum values a metric must reach for the bundle to be built, e.g. {"map@r": 0.5}. Empty: no gate.
    require: dict[str, float] = Field(default_factory=dict)
    release: str | None = Field(None, description="free-form release name recorded in the manifest")
    thumbnails: ThumbnailParams = Field(default_factory=ThumbnailParams)
