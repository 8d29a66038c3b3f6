"""A bounded, on-disk cache of decoded, pre-resized images, keyed by the sha256 of each file's bytes.

Decoding a 500 px JPEG and resizing it costs a few milliseconds per image per epoch; keeping every decoded
image in memory costs tens of GB at SOP size. This cache pays the decode once: each image is decoded
(:func:`deepmetric.data.images.open_image`, same checks as everywhere else), its shorter side reduced to
``short_side`` (never enlarged), and stored either as raw ``uint8`` RGB pixels (``fmt="raw"``: reading is a
``pread`` and a reshape) or re-encoded as a high-quality JPEG (``fmt="jpeg"``: ~10× smaller on disk, a cheap
decode of a small image). Reads go through ``os.pread`` into fresh buffers, so a worker's resident memory does
not grow with the dataset: the operating system's page cache holds what is hot.

Layout of one cache variant (``<dir>/<fmt>-s<short_side>[-q<quality>]/``)::

    index.parquet   sha256 (the key), shard, offset, length, height, width   (rewritten atomically on every build)
    shard-<uuid>.bin                                              (immutable once written)
    .lock                                                         (serialises builders; readers need no lock)

Entries are keyed by the content hash, so a cache is reused across runs, datasets and manifests, and an image
whose bytes change gets a new entry (its old one is simply no longer referenced). An image the manifest gives a
bounding box is cached cut to it (before the reduction, so the crop keeps its resolution), under the key
``<sha256>@x_1,y_1,x_2,y_2``. A file whose bytes no longer
match the manifest's ``sha256`` is refused when it is cached, naming the file: re-run ingest.
Deleting the folder is always safe; it is rebuilt on the next run.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from PIL import Image

from deepmetric.data.images import ImageDecodeError, ImageLimits, open_image, safe_join
from deepmetric.data.transforms import crop_to_box, resize_shorter
from deepmetric.io.atomic import atomic_path

__all__ = ["CachedImages", "ImageCache", "StaleManifestError", "estimate_bytes"]

log = logging.getLogger(__name__)

CacheFormat = Literal["raw", "jpeg"]
_INDEX = "index.parquet"
_CHUNK = 64


class StaleManifestError(ValueError):
    """A file's bytes differ from the sha256 the manifest recorded for it (the file changed after ingest)."""


def estimate_bytes(widths: Sequence[int], heights: Sequence[int], short_side: int, fmt: CacheFormat) -> int:
    """Disk size of caching images of these sizes (raw: exact; jpeg: ~1/10 of raw, a planning figure)."""
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    scale = np.minimum(1.0, short_side / np.maximum(1.0, np.minimum(w, h)))
    raw = float((np.floor(w * scale) * np.floor(h * scale) * 3).sum())
    return int(raw if fmt == "raw" else raw / 10)


def _encode_one(job: tuple) -> tuple[str, bytes, int, int]:
    """Decode, crop to its box, reduce, encode one image; returns (key, payload, height, width). Runs in worker
    processes."""
    root, rel, expected, short_side, fmt, quality, limits, box = job
    path = safe_join(root, rel)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageDecodeError(str(path), f"cannot read file ({e.strerror or e})") from None
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise StaleManifestError(
            f"{path}: the file's bytes changed since ingest (sha256 {digest[:12]}… ≠ manifest {expected[:12]}…); "
            "re-run ingest (`dvc repro` does) before training"
        )
    img = crop_to_box(open_image(data, name=str(path), limits=limits), box, str(path))
    if min(img.size) > short_side:
        img = resize_shorter(img, short_side, None)  # a reduction: never larger than the decoded image
    w, h = img.size
    if fmt == "raw":
        payload = np.ascontiguousarray(np.asarray(img, dtype=np.uint8)).tobytes()
    else:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        payload = buf.getvalue()
    return cache_key(digest, box), payload, h, w


def cache_key(sha256: str, box: tuple[float, float, float, float] | None) -> str:
    """The entry of an image: its bytes' sha256, plus its box when it is cut to one."""
    return sha256 if box is None else f"{sha256}@{','.join(f'{v:g}' for v in box)}"


def _encode_chunk(jobs: list[tuple]) -> list[tuple[str, bytes, int, int]]:
    return [_encode_one(j) for j in jobs]


@dataclass(frozen=True)
class ImageCache:
    """One cache variant: images reduced to ``short_side`` and stored as ``fmt`` under ``directory``."""

    directory: Path
    short_side: int
    fmt: CacheFormat = "raw"
    quality: int = 95

    @classmethod
    def at(cls, root: str | os.PathLike[str], short_side: int, fmt: CacheFormat = "raw", quality: int = 95) -> ImageCache:
        name = f"{fmt}-s{short_side}" + (f"-q{quality}" if fmt == "jpeg" else "")
        return cls(Path(root) / name, int(short_side), fmt, int(quality))

    # --- index -------------------------------------------------------------------------------------------------
    def read_index(self) -> pd.DataFrame:
        p = self.directory / _INDEX
        if not p.exists():
            return pd.DataFrame({"sha256": pd.Series(dtype=str), "shard": pd.Series(dtype=str),
                                 "offset": pd.Series(dtype="int64"), "length": pd.Series(dtype="int64"),
                                 "height": pd.Series(dtype="int32"), "width": pd.Series(dtype="int32")})
        return pd.read_parquet(p)

    # --- build -------------------------------------------------------------------------------------------------
    def ensure(
        self,
        root: str,
        paths: Sequence[str],
        sha256: Sequence[str] | None = None,
        limits: ImageLimits = ImageLimits(),
        workers: int = 0,
        progress: bool = False,
        boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    ) -> CachedImages:
        """Cache every listed image that is not cached yet (in parallel), then return a reader for them in order.

        ``sha256`` (the manifest's column) keys the entries; without it every file is read and hashed first.
        ``limits``: the per-image bounds of the decode. ``boxes``: each image's bounding box (None: whole images).
        """
        import filelock
        from tqdm.auto import tqdm

        paths = [str(p) for p in paths]
        boxes = [None] * len(paths) if boxes is None else list(boxes)
        if sha256 is None:
            sha256 = [hashlib.sha256(safe_join(root, p).read_bytes()).hexdigest() for p in paths]
            expected: list[str | None] = [None] * len(paths)
        else:
            sha256 = [str(s) for s in sha256]
            expected = list(sha256)
        self.directory.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(self.directory / ".lock")):
            index = self.read_index()
            have = set(index["sha256"])
            todo: dict[str, tuple] = {}
            keys = [cache_key(s, b) for s, b in zip(sha256, boxes, strict=True)]
            for p, k, e, b in zip(paths, keys, expected, boxes, strict=True):
                if k not in have and k not in todo:
                    todo[k] = (root, p, e, self.short_side, self.fmt, self.quality, limits, b)
            if todo:
                index = self._build(index, list(todo.values()), workers, progress, tqdm)
        return CachedImages(self, index.set_index("sha256").loc[keys].reset_index(), paths)

    def _build(self, index: pd.DataFrame, jobs: list[tuple], workers: int, progress: bool, tqdm) -> pd.DataFrame:
        shard = f"shard-{uuid.uuid4().hex[:12]}.bin"
        rows: list[tuple[str, str, int, int, int, int]] = []
        chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
        bar = tqdm(total=len(jobs), desc=f"caching images ({self.fmt}, shorter side {self.short_side})",
                   disable=not progress, leave=False, unit="img")
        with atomic_path(self.directory / shard) as tmp, open(tmp, "wb") as out:
            offset = 0
            if workers > 0 and len(chunks) > 1:
                import multiprocessing as mp

                ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    results = pool.map(_encode_chunk, chunks)
                    offset = self._write(results, out, shard, rows, offset, bar)
            else:
                offset = self._write(map(_encode_chunk, chunks), out, shard, rows, offset, bar)
            out.flush()
            os.fsync(out.fileno())
        bar.close()
        new = pd.DataFrame(rows, columns=["sha256", "shard", "offset", "length", "height", "width"])
        index = pd.concat([index, new], ignore_index=True) if len(index) else new
        with atomic_path(self.directory / _INDEX) as tmp:
            index.to_parquet(tmp, index=False)
        log.info("image cache %s: %d new images (%s MB), %d in all", self.directory, len(rows),
                 f"{sum(r[3] for r in rows) / 1e6:.1f}", len(index))
        return index

    @staticmethod
    def _write(results, out, shard: str, rows: list, offset: int, bar) -> int:
        for chunk in results:
            for digest, payload, h, w in chunk:
                out.write(payload)
                rows.append((digest, shard, offset, len(payload), h, w))
                offset += len(payload)
            bar.update(len(chunk))
        return offset


class CachedImages:
    """Read access to cached images, in the order they were asked for. Safe to use in DataLoader workers (file
    descriptors are opened lazily per process)."""

    def __init__(self, cache: ImageCache, entries: pd.DataFrame, paths: Sequence[str]) -> None:
        self.cache = cache
        self.paths = list(paths)
        self.sha256 = entries["sha256"].to_numpy()
        self.shard = entries["shard"].to_numpy()
        self.offset = entries["offset"].to_numpy(dtype=np.int64)
        self.length = entries["length"].to_numpy(dtype=np.int64)
        self.height = entries["height"].to_numpy(dtype=np.int64)
        self.width = entries["width"].to_numpy(dtype=np.int64)
        self._fds: dict[str, int] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.paths)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_pid"] = {}, -1
        return state

    def _fd(self, shard: str) -> int:
        if self._pid != os.getpid():  # a forked worker must not share its parent's descriptors' offsets
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = os.open(self.cache.directory / shard, os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def payload(self, i: int) -> bytes:
        n = int(self.length[i])
        data = os.pread(self._fd(self.shard[i]), n, int(self.offset[i]))
        if len(data) != n:
            raise ImageDecodeError(
                self.paths[i], f"image cache shard {self.cache.directory / self.shard[i]} is damaged (short read); "
                f"delete {self.cache.directory} and re-run",
            )
        return data

    def array(self, i: int) -> np.ndarray:
        """``uint8 (H, W, 3)``."""
        data = self.payload(i)
        if self.cache.fmt == "raw":
            return np.frombuffer(data, dtype=np.uint8).reshape(int(self.height[i]), int(self.width[i]), 3)
        return np.asarray(self.image(i))

    def image(self, i: int) -> Image.Image:
        """RGB ``PIL.Image``."""
        data = self.payload(i)
        if self.cache.fmt == "raw":
            arr = np.frombuffer(data, dtype=np.uint8).reshape(int(self.height[i]), int(self.width[i]), 3)
            return Image.fromarray(arr, "RGB")
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB") if img.mode != "RGB" else img

    def is_jpeg(self) -> bool:
        return self.cache.fmt == "jpeg"

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def __del__(self) -> None:
        if self._pid == os.getpid():
            self.close()
