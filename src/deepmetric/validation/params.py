"""``validate:`` parameters (conf/base/parameters_validate.yml), checked with pydantic (``extra="forbid"``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ValidateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Image size bounds (pixels, after EXIF orientation).
    min_width: int = Field(default=16, ge=1)
    min_height: int = Field(default=16, ge=1)
    max_width: int = Field(default=10_000, ge=1)
    max_height: int = Field(default=10_000, ge=1)
    # Every class needs at least this many images in every split (retrieval needs a positive).
    min_images_per_class: int = Field(default=2, ge=1)
    # Re-read the listed files: present, decodable and byte-identical to what ingest hashed.
    check_files: bool = True
    # all: every file re-read and decoded; sample: every file must exist (one stat each) and `decode_sample` of
    # them, chosen at random (the same ones on every run of the same manifest), are re-read, decoded and
    # re-hashed — for very large catalogues (ingest has decoded and hashed every file already).
    decode_check: Literal["all", "sample"] = "all"
    decode_sample: int = Field(default=1000, ge=1)
    # Compare image/class counts with the distributed figures of the four benchmarks (a truncated download
    # fails). Turn off for a deliberate subset.
    known_counts: bool = True
    # Example rows per failing check in the report and the failure message.
    max_examples: int = Field(default=5, ge=1, le=100)
    # Parallel decode workers (0: one per CPU core).
    workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> ValidateParams:
        if self.min_width > self.max_width:
            raise ValueError(f"min_width ({self.min_width}) exceeds max_width ({self.max_width})")
        if self.min_height > self.max_height:
            raise ValueError(f"min_height ({self.min_height}) exceeds max_height ({self.max_height})")
        return self
