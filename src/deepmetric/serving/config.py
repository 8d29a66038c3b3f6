"""The server's settings (`deepmetric serve` flags, DEEPMETRIC_* environment variables of its workers)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from deepmetric.data.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, PILLOW_MAX_PIXELS, ImageLimits

ENV_PREFIX = "DEEPMETRIC_"
BUNDLE_ENV = "DEEPMETRIC_BUNDLE"  # the bundle folder a worker started by `serve --workers N` loads (resolved)
BUNDLE_SOURCE_ENV = "DEEPMETRIC_BUNDLE_SOURCE"  # the --bundle path as given (maybe a symlink): what reloads read
ADMIN_TOKEN_ENV = "DEEPMETRIC_ADMIN_TOKEN"  # enables POST /v1/admin/reload
STORE_ENV = "DEEPMETRIC_STORE"  # `serve --store URI`: the Milvus gallery store searched instead of the bundle's index
STORE_COLLECTION_ENV = "DEEPMETRIC_STORE_COLLECTION"  # … and its collection (`--collection`)
SUPERVISED_ENV = "DEEPMETRIC_SUPERVISED"  # set in workers under the multiprocess supervisor (runner.serve_workers)


class ServerSettings(BaseModel):
    """Limits and knobs of `deepmetric serve` (CLI flags, or DEEPMETRIC_* environment variables for workers)."""

    model_config = ConfigDict(extra="forbid")

    max_upload_bytes: int = Field(20 * 1024 * 1024, gt=0, description="request body limit (all images together)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, le=PILLOW_MAX_PIXELS,
                            description="per image and per resize intermediate; above it a decompression bomb")
    max_aspect_ratio: float = Field(DEFAULT_MAX_ASPECT_RATIO, ge=1,
                                    description="longer side / shorter side; above it refused (thin images)")
    max_images: int = Field(32, gt=0, description="images per request")
    body_timeout_s: float = Field(30.0, gt=0, le=3600,
                                  description="longest wait for a request body's next bytes; then 408 body_timeout")
    default_k: int = Field(10, gt=0)
    # One intra-op thread per worker measured fastest on the project machine at 1, 8 and 32 clients, with batching
    # on and off (benchmarks/serving/README.md): a parallel op stalls whenever one of its threads is descheduled.
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads per worker (0: its default, all cores)")
    batching: bool = Field(True, description="dynamic batching: concurrent requests run as one onnxruntime batch")
    batch_window_ms: float = Field(2.0, ge=0, le=100,
                                   description="how long a batch waits for requests that are still being decoded")
    max_batch: int = Field(32, ge=1, le=1024, description="images per onnxruntime batch")
    prep_threads: int = Field(0, ge=0, description="decode threads (0: one per core)")

    @property
    def limits(self) -> ImageLimits:
        """The per-image limits (``max_pixels``, ``max_aspect_ratio``) as the one object image readers take."""
        return ImageLimits(self.max_pixels, self.max_aspect_ratio)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if environ is None else environ
        values = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + k.upper(): str(v) for k, v in self.model_dump().items()}
