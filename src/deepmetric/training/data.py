"""The training data path: a DataLoader with worker processes over the method's own batches.

- **Batches.** The method's ``batch_sampler`` (P×K, D&C's per-cluster batches, Sharing's class + surrogate
  halves…) decides the indices of every step, in the main process, exactly as it always did; this module only
  feeds them to a :class:`torch.utils.data.DataLoader` (``batch_sampler`` = the epoch's list of batches).
- **Reproducible augmentation.** Every sample of every step gets its own seed derived from
  (seed, epoch, step, position in the batch) (`deepmetric.runtime.sample_seed`); the transform draws from a generator seeded with it
  (:class:`~deepmetric.data.dataset.ManifestImages` keys ``(index, seed)``). The pixels of a batch therefore do
  not depend on the number of workers, on which worker ran which sample, or on a resume.
- **Workers.** ``train.num_workers`` processes (``auto``: one per available core, at most 16, shared between the
  ranks of one machine: `deepmetric.runtime.resolve_workers`), persistent across epochs, ``prefetch_factor`` batches ahead each, pinned memory on CUDA.
- **Decoded-image cache.** ``train.cache`` (see :mod:`deepmetric.data.cache`): images decoded once, reduced to
  the model's size, stored on disk and read back with ``pread`` — bounded memory at any dataset size.
- **GPU decode** (``train.decode: gpu``): workers only read JPEG bytes and draw the crop; the main process
  decodes the whole batch with nvJPEG (``torchvision.io.decode_jpeg(device="cuda")``) and crops/resizes on the
  GPU. Non-JPEG files are decoded on the CPU in the workers (the fallback).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from deepmetric.data.cache import CachedImages, ImageCache, estimate_bytes
from deepmetric.data.contract import boxes_of
from deepmetric.data.dataset import ManifestImages, seeded_cpu_rng
from deepmetric.data.images import (
    DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, ImageDecodeError, ImageLimits, check_header, oriented_size,
    safe_join,
)
from deepmetric.data.transforms import InputSpec, TrainTransform
from deepmetric.errors import reraise_worker_errors
from deepmetric.runtime import load_seed, sample_seed

log = logging.getLogger(__name__)

class CacheConfig(BaseModel):
    """`train.cache`: where decoded training images come from."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "raw", "jpeg", "off"] = Field(
        "auto", description="raw: uint8 pixels on disk; jpeg: re-encoded q95; off: decode the files every time; "
        "auto: raw when it fits in raw_max_gb, else jpeg (off when no cache folder is configured)")
    margin: float = Field(1.0, ge=1.0, le=4.0, description="cached shorter side = model.resize × margin")
    jpeg_quality: int = Field(95, ge=50, le=100)
    raw_max_gb: float = Field(16.0, gt=0, description="auto picks raw only below this many GB")


class EpochBatches(torch.utils.data.Sampler):
    """The DataLoader's ``batch_sampler``: the current epoch's batches as ``[(index, sample_seed), …]`` lists.

    One object for the whole run (so workers can persist across epochs); :meth:`set` loads an epoch.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.seed = 0
        self.epoch = 0
        self.first_step = 0
        self.share: Callable[[list], list] | None = None

    def set(self, batches: Sequence[Sequence[int]], seed: int, epoch: int, first_step: int = 0,
            share: Callable[[list], list] | None = None) -> None:
        """``share`` picks this process's part of each global batch (several training processes): samples keep
        the seeds of their position in the global batch, so they are augmented as in a one-process run."""
        self.batches = [list(map(int, b)) for b in batches]
        self.seed, self.epoch, self.first_step, self.share = seed, epoch, first_step, share

    def keys(self, b: int) -> list[tuple[int, int]]:
        step = self.first_step + b
        keys = [(i, sample_seed(self.seed, self.epoch, step, j)) for j, i in enumerate(self.batches[b])]
        return self.share(keys) if self.share is not None else keys

    def indices(self, b: int) -> list[int]:
        """The dataset indices this process loads for batch ``b``."""
        return [i for i, _ in self.keys(b)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for b in range(len(self.batches)):
            yield self.keys(b)

    def __len__(self) -> int:
        return len(self.batches)


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


def _keep(items: list[Any]) -> list[Any]:
    return items


class GpuDecodeImages(torch.utils.data.Dataset):
    """Worker side of GPU decoding: JPEG bytes + the sample's crop (drawn exactly as the CPU path draws it);
    other formats are decoded and augmented here on the CPU."""

    def __init__(self, cpu: ManifestImages, transform: TrainTransform) -> None:
        self.cpu = cpu
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cpu)

    def _jpeg(self, i: int) -> tuple[bytes, int, int] | None:
        c = self.cpu.cached
        if c is not None:
            return (c.payload(i), int(c.width[i]), int(c.height[i])) if c.is_jpeg() else None
        if self.cpu.box(i) is not None:  # cut to its box on the CPU (the cache would hold it cut already)
            return None
        path = safe_join(self.cpu.root, self.cpu.paths[i])
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageDecodeError(str(path), f"cannot read file ({e.strerror or e})") from None
        if data[:3] != b"\xff\xd8\xff":
            return None
        # the header check of open_image (same limits, same errors), before nvJPEG decodes anything
        img = check_header(data, str(path), self.cpu.limits)
        if img.mode not in ("RGB", "L", "YCbCr"):  # CMYK and friends: nvJPEG support varies, use the CPU
            return None
        w, h = oriented_size(img)
        return data, w, h

    def __getitem__(self, key: tuple[int, int]):
        i, seed = key
        with seeded_cpu_rng(int(seed)):
            jpeg = self._jpeg(int(i))
            if jpeg is None:
                return ("pixels", self.transform(self.cpu.image(int(i))), None)
            data, w, h = jpeg
            return ("jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8), self.transform.params(w, h))


def gpu_decode_batch(items: list, transform: TrainTransform, device: torch.device) -> torch.Tensor:
    """Main-process side: decode every JPEG of the batch in one call on ``device`` and crop/resize there."""
    from torchvision.io import ImageReadMode, decode_jpeg

    jpeg_pos = [k for k, it in enumerate(items) if it[0] == "jpeg"]
    out: list[torch.Tensor | None] = [None] * len(items)
    if jpeg_pos:
        decoded = decode_jpeg([items[k][1] for k in jpeg_pos], mode=ImageReadMode.RGB, device=device,
                              apply_exif_orientation=True)
        for k, img in zip(jpeg_pos, decoded, strict=True):
            out[k] = transform.apply_tensor(img, items[k][2])
    for k, it in enumerate(items):
        if it[0] == "pixels":
            out[k] = it[1].to(device, non_blocking=True)
    return torch.stack(out)  # type: ignore[arg-type]


def resolve_decode(decode: Literal["cpu", "gpu"], device: torch.device) -> Literal["cpu", "gpu"]:
    """``train.decode`` on this device: GPU decoding falls back to the CPU (with a warning) without CUDA."""
    if decode == "gpu" and device.type != "cuda":
        log.warning("train.decode=gpu but training runs on %s: decoding on the CPU instead", device)
        return "cpu"
    return decode


def choose_cache(cfg: CacheConfig, cache_dir: str | os.PathLike[str] | None, spec: InputSpec,
                 rows: pd.DataFrame) -> ImageCache | None:
    """The cache variant for these rows (None: decode on the fly)."""
    if cfg.mode == "off" or cache_dir is None:
        return None
    short = int(math.ceil(spec.resize * cfg.margin))
    fmt = cfg.mode
    if fmt == "auto":
        if {"width", "height"} <= set(rows.columns):
            need = estimate_bytes(rows["width"], rows["height"], short, "raw")
        else:  # no sizes in the manifest: assume the worst, images at least the cached size
            need = len(rows) * short * short * 3 * 4 // 3
        fmt = "raw" if need <= cfg.raw_max_gb * 1e9 else "jpeg"
        log.info("image cache: %s (raw would take %.2f GB; raw_max_gb=%s)", fmt, need / 1e9, cfg.raw_max_gb)
    return ImageCache.at(cache_dir, short, fmt, cfg.jpeg_quality)


def open_images(
    root: str, rows: pd.DataFrame, spec: InputSpec, cache: ImageCache | None, max_pixels: int | None,
    workers: int, progress: bool, max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> ManifestImages:
    """A :class:`ManifestImages` over ``rows`` (evaluation transform), backed by ``cache`` when given (built
    first for what is missing, with ``workers`` processes)."""
    limits = ImageLimits(max_pixels, max_aspect_ratio)
    cached: CachedImages | None = None
    boxes = boxes_of(rows)
    if cache is not None:
        sha = rows["sha256"].tolist() if "sha256" in rows.columns else None
        cached = cache.ensure(root, rows["path"].tolist(), sha, limits=limits, workers=workers,
                              progress=progress, boxes=boxes)
    return ManifestImages(root, rows["path"], spec, limits=limits, cached=cached, boxes=boxes)


class TrainLoader:
    """The training images of one run as batches on ``device``: ``epoch(batches, …)`` yields
    ``(indices, uint8 NCHW images)`` per step; ``load`` fetches one batch directly (no workers)."""

    def __init__(
        self,
        images: ManifestImages,
        transform,
        device: torch.device,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        decode: Literal["cpu", "gpu"] = "cpu",
    ) -> None:
        self.images = images.with_transform(transform)
        self.transform = transform
        self.device = device
        self.decode = decode
        self.num_workers = num_workers
        self.sampler = EpochBatches()
        if decode == "gpu":
            if not isinstance(transform, TrainTransform):
                raise ValueError("train.decode=gpu crops on the GPU with RandomResizedCrop + flip only "
                                 "(train.augment.crop: resized, no erasing); use train.decode: cpu for this augmentation")
            if images.cached is not None and not images.cached.is_jpeg():
                raise ValueError("train.decode=gpu decodes JPEG bytes: use train.cache.mode jpeg or off, not raw")
            self.dataset: torch.utils.data.Dataset = GpuDecodeImages(images, transform)
            collate = _keep
        else:
            self.dataset = self.images
            collate = _stack
        kwargs: dict[str, Any] = {}
        if num_workers > 0:
            kwargs = dict(persistent_workers=True, prefetch_factor=prefetch_factor,
                          multiprocessing_context=_mp_context())
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=num_workers, collate_fn=collate,
            pin_memory=device.type == "cuda" and decode == "cpu",
            # its own generator: creating an iterator must not consume the global RNG (dropout, miners), or a
            # resumed run would diverge from an uninterrupted one
            generator=torch.Generator(), **kwargs,
        )

    def _to_device(self, batch) -> torch.Tensor:
        if self.decode == "gpu":
            return gpu_decode_batch(batch, self.transform, self.device)
        return batch.to(self.device, non_blocking=True)

    def epoch(self, batches: Sequence[Sequence[int]], seed: int, epoch: int, first_step: int = 0,
              share: Callable[[list], list] | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
        self.sampler.set(batches, seed, epoch, first_step, share)
        for b, batch in enumerate(reraise_worker_errors(self.loader)):
            yield self.sampler.indices(b), self._to_device(batch)

    def load(self, indices: Sequence[int], seed: int, step: int) -> torch.Tensor:
        """One batch in this process (for a method that asks for extra images at global step ``step``)."""
        keys = [(int(i), load_seed(seed, step, j)) for j, i in enumerate(indices)]
        items = [self.dataset[k] for k in keys]
        return self._to_device(_keep(items) if self.decode == "gpu" else _stack(items))

    def close(self) -> None:
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None


def _mp_context():
    import multiprocessing as mp

    # fork is the cheapest start on Linux and needs no pickling of the dataset; elsewhere the platform default.
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None


__all__ = [
    "CacheConfig", "EpochBatches", "GpuDecodeImages", "TrainLoader", "choose_cache", "gpu_decode_batch",
    "open_images", "resolve_decode", "DEFAULT_MAX_PIXELS",
]
