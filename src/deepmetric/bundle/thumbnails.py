"""Gallery thumbnails carried by the bundle, so an inference host shows results without the dataset.

The `bundle` stage decodes every gallery image (`open_image`, the same decoder as everywhere else), shrinks it
to fit ``size`` × ``size`` (aspect ratio kept) and encodes it as WebP or JPEG. The thumbnails go into parquet
shards named ``thumbnails-00000.parquet``, ``thumbnails-00001.parquet``, …, each a table ``id`` (int64,
consecutive) + ``image`` (binary), at most ``shard_items`` rows per shard; the manifest lists and checksums the shards
like every other file (``manifest["thumbnails"]``). The ``id`` column is the gallery row (base rows, then each
segment's rows: :mod:`deepmetric.bundle.gallery`): a gallery update appends shards for the added images only, so a
shard before the last may be short (the last one of an earlier version). Reading needs pyarrow only (no torch, no
dataset).
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from deepmetric.bundle.format import shard_name
from deepmetric.data.images import ImageLimits

MEDIA_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg"}


def encode_thumbnail(img: Any, size: int, fmt: str, quality: int) -> bytes:
    """An RGB ``PIL.Image`` → ``fmt`` bytes fitting ``size`` × ``size`` (never enlarged)."""
    from PIL import Image

    thumb = img.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    if fmt == "webp":
        thumb.save(buf, format="WEBP", quality=quality, method=4)
    elif fmt == "jpeg":
        thumb.save(buf, format="JPEG", quality=quality, optimize=True)
    else:
        raise ValueError(f"unknown thumbnail format {fmt!r}; use 'webp' or 'jpeg'")
    return buf.getvalue()


def build_thumbnail_shards(
    paths: Sequence[str], root: str | os.PathLike[str], *, size: int, fmt: str, quality: int, shard_items: int,
    limits: ImageLimits, boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
) -> dict[str, bytes]:
    """``{shard name: parquet bytes}`` for the gallery images at ``paths`` (relative to ``root``), in id order,
    each cut to its box in ``boxes`` (None: whole images) as the index embedded it. A gallery image that cannot
    be read raises ``ImageDecodeError``/``OSError`` naming it."""
    from deepmetric.data.images import open_image, safe_join
    from deepmetric.data.transforms import crop_to_box

    images = [encode_thumbnail(crop_to_box(open_image(safe_join(root, rel), limits=limits),
                                           None if boxes is None else boxes[i], rel), size, fmt, quality)
              for i, rel in enumerate(paths)]
    return write_thumbnail_shards(images, shard_items)


def write_thumbnail_shards(images: Sequence[bytes], shard_items: int, first_row: int = 0,
                           first_shard: int = 0) -> dict[str, bytes]:
    """``{shard name: parquet bytes}`` of encoded thumbnails in gallery row order (``id`` column: the row), the
    first one for row ``first_row`` in shard number ``first_shard`` (a gallery update appends shards)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards: dict[str, bytes] = {}
    for s, start in enumerate(range(0, len(images), shard_items), start=first_shard):
        chunk = list(images[start : start + shard_items])
        start += first_row
        table = pa.table({"id": pa.array(np.arange(start, start + len(chunk), dtype=np.int64)),
                          "image": pa.array(chunk, type=pa.binary())})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="none")  # WebP/JPEG bytes do not compress further
        shards[shard_name(s)] = buf.getvalue()
    return shards


class ThumbnailError(ValueError):
    """The thumbnail shards do not match what the manifest says."""


class Thumbnails:
    """Thumbnails of a loaded bundle, by gallery id: one pyarrow binary array per shard, kept in memory."""

    def __init__(self, info: Mapping[str, Any], blobs: Mapping[str, bytes], gallery_size: int) -> None:
        import pyarrow.parquet as pq

        self.format = str(info.get("format"))
        if self.format not in MEDIA_TYPES:
            raise ThumbnailError(f"thumbnails.format is {self.format!r}, expected one of {sorted(MEDIA_TYPES)}")
        self.media_type = MEDIA_TYPES[self.format]
        self.size = int(info.get("size", 0))
        self.shard_items = int(info.get("shard_items", 0))
        names = list(info.get("files", []))
        if self.shard_items <= 0 or names != [shard_name(i) for i in range(len(names))]:
            raise ThumbnailError(f"thumbnails.files {names} / shard_items {self.shard_items} are not a shard sequence")
        self._shards: list[Any] = []
        self._starts: list[int] = []
        expected = 0
        for name in names:
            try:
                table = pq.read_table(io.BytesIO(blobs[name]))
            except Exception as e:  # pyarrow raises several types
                raise ThumbnailError(f"{name}: not a readable parquet table ({e})") from None
            if table.column_names != ["id", "image"]:
                raise ThumbnailError(f"{name}: columns {table.column_names}, expected ['id', 'image']")
            ids = table.column("id").to_numpy()
            if not np.array_equal(ids, np.arange(expected, expected + len(ids))):
                raise ThumbnailError(f"{name}: ids are not {expected}..{expected + len(ids) - 1} in order")
            if not 0 < len(ids) <= self.shard_items:
                raise ThumbnailError(f"{name}: {len(ids)} rows, thumbnails.shard_items says {self.shard_items}")
            self._shards.append(table.column("image").combine_chunks())
            self._starts.append(expected)
            expected += len(ids)
        if expected != gallery_size:
            raise ThumbnailError(f"{expected} thumbnails for a gallery of {gallery_size}")
        self.count = expected

    def get(self, row: int) -> bytes | None:
        """The encoded thumbnail of gallery row ``row`` (:meth:`deepmetric.bundle.Bundle.row_of` of an id), or None
        when there is none."""
        if not 0 <= row < self.count:
            return None
        s = bisect.bisect_right(self._starts, row) - 1
        return self._shards[s][row - self._starts[s]].as_py()
