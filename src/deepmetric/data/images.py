"""Decode one image file into an RGB ``PIL.Image``, or fail with a message naming the file and the reason.

Shared by ingest, training, evaluation and the inference server, so it depends on Pillow only. It handles the
mess found in real downloads: zero-byte, truncated and non-image files (:class:`ImageDecodeError`),
decompression bombs (refused above ``max_pixels``), EXIF orientation, and grayscale / CMYK / palette /
16-bit / alpha images (converted to 8-bit RGB; transparency composited on white).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit (width × height) above which a file is treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 40_000_000
#: Default limit on the longer side / shorter side. A thin image (1×100,000 pixels in a 500-byte PNG) passes any
#: pixel limit, but resizing its shorter side up to the model's input would create a huge intermediate
#: (64×6,400,000 pixels); it is refused from its header, before decoding.
DEFAULT_MAX_ASPECT_RATIO = 100.0
#: The most a configured ``max_pixels`` may be: Pillow refuses larger images itself (``Image.MAX_IMAGE_PIXELS``,
#: as a warning that deepmetric turns into an error) before deepmetric's own check could run.
PILLOW_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_PIXELS",
    "ImageDecodeError",
    "ImageLimits",
    "ImageTooLargeError",
    "PILLOW_MAX_PIXELS",
    "PathEscapeError",
    "check_header",
    "check_size",
    "image_size",
    "open_image",
    "oriented_size",
    "safe_join",
]


@dataclass(frozen=True)
class ImageLimits:
    """The per-image limits every reader of untrusted images applies (ingest, training, evaluation, export,
    index, gallery updates, the server): one object, passed as ``limits=``.

    ``max_pixels``: width × height above which a file is refused as a decompression bomb, also the bound on a
    resize intermediate (None: Pillow's own limit only). ``max_aspect_ratio``: longer side / shorter side above
    which an image is refused from its header (None: no limit). The parameters that set them are
    ``data.max_pixels`` / ``data.max_aspect_ratio`` and the server's ``--max-pixels`` / ``--max-aspect-ratio``.
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO

    def __post_init__(self) -> None:
        if self.max_pixels is not None and not 0 < self.max_pixels <= PILLOW_MAX_PIXELS:
            raise ValueError(f"max_pixels must be in [1, {PILLOW_MAX_PIXELS:,}] (Pillow's own limit), "
                             f"got {self.max_pixels}")
        if self.max_aspect_ratio is not None and not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


class ImageDecodeError(ValueError):
    """A file that is not a usable image. ``path`` names it, ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path or '<bytes>'}: {reason}")

    def __reduce__(self):
        # pickled by worker processes (sharded embedding, cache build): rebuilt from (path, reason), type kept
        return type(self), (self.path, self.reason)


class ImageTooLargeError(ImageDecodeError):
    """An image refused for the work it would cost (too many pixels, too thin), before that work is done.
    The reason quotes the configured limit and the parameter that sets it."""


def check_size(label: str | None, size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse a ``(width, height)`` read from a header: more pixels than ``limits.max_pixels`` (a
    decompression bomb), then a longer side above ``limits.max_aspect_ratio`` × the shorter side (too thin)."""
    w, h = size
    if limits.max_pixels is not None and w * h > limits.max_pixels:
        raise _bomb(label, w * h, (w, h), limits.max_pixels)
    if min(w, h) < 1:
        raise ImageDecodeError(label, f"corrupt image data (size {w}x{h})")
    if limits.max_aspect_ratio is not None and max(w, h) > limits.max_aspect_ratio * min(w, h):
        raise ImageTooLargeError(
            label,
            f"refused as too thin: {w}x{h} has an aspect ratio of {max(w, h) / min(w, h):,.0f}:1, above the "
            f"limit of {limits.max_aspect_ratio:,g}:1 (parameter max_aspect_ratio)",
        )


def _bomb(label: str, pixels: int | None, size: tuple[int, int] | None, max_pixels: int | None) -> ImageTooLargeError:
    """The refusal message quotes the limit that applied: the configured ``max_pixels``, or Pillow's own
    (when none is configured, or when Pillow's is the lower one)."""
    what = f"{size[0]}x{size[1]} = {pixels:,} pixels" if size else (f"{pixels:,} pixels" if pixels else "the image")
    if max_pixels is not None and (pixels is None or pixels > max_pixels):
        limit, param = max_pixels, "parameter max_pixels"
    else:
        limit, param = int(Image.MAX_IMAGE_PIXELS or PILLOW_MAX_PIXELS), "Pillow's Image.MAX_IMAGE_PIXELS"
    return ImageTooLargeError(label, f"refused as a decompression bomb: {what} exceeds the limit of {limit:,} ({param})")


class PathEscapeError(ValueError):
    """A relative path that would leave the dataset root (``..``, absolute path, symlink out)."""


def safe_join(root: str | os.PathLike[str], rel: str) -> Path:
    """``root / rel``, refusing a ``rel`` that is absolute or resolves outside ``root`` (also via symlinks)."""
    if not isinstance(rel, str) or not rel:
        raise PathEscapeError(f"empty or non-string path {rel!r} under {root}")
    if "\x00" in rel:
        raise PathEscapeError(f"path {rel!r} contains a NUL byte")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise PathEscapeError(f"path {rel!r} escapes the dataset root {root}")
    root_path = Path(root)
    joined = root_path.joinpath(*p.parts)
    real_root = os.path.realpath(root_path)
    real = os.path.realpath(joined)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathEscapeError(f"path {rel!r} resolves to {real}, outside the dataset root {root}")
    return joined


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16/32-bit integer or float grayscale: scale the type's range to 8 bit instead of clipping at 255.
        img32 = img.convert("F") if mode == "F" else img.convert("I")
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        else:
            lo, hi = img32.getextrema()
            if mode == "I" and lo >= 0 and hi <= 255:
                lo, hi = 0.0, 255.0
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return img32.point(lambda v: v * scale - lo * scale).convert("L").convert("RGB")
    if mode == "P" or mode == "PA":
        img = img.convert("RGBA") if ("transparency" in img.info or mode == "PA") else img.convert("RGB")
        mode = img.mode
    elif mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV") and "transparency" not in img.info:
        return img.convert("RGB")
    if mode in ("LA", "La", "RGBa", "RGBA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _read(path_or_bytes, name: str | None) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes), name or "<bytes>"
    label = str(path_or_bytes)
    try:
        return Path(path_or_bytes).read_bytes(), label
    except FileNotFoundError:
        raise ImageDecodeError(label, "file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError(label, "is a directory, not an image file") from None
    except OSError as e:
        raise ImageDecodeError(label, f"cannot read file ({e.strerror or e})") from None


@contextlib.contextmanager
def _pillow_errors(label: str, nbytes: int, max_pixels: int | None) -> Iterator[None]:
    """Turn what Pillow raises while opening or decoding into :class:`ImageDecodeError` naming ``label``; its
    decompression-bomb warnings become errors."""
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and 2x that; make every bomb an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(label, f"not an image file (unrecognised format, {nbytes} bytes)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own check ran first (in Image.open): quote the configured limit, not Pillow's.
        found = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb(label, int(found.group(1)) if found else None, None, max_pixels) from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "end of file" in msg.lower():
            raise ImageDecodeError(label, f"truncated image data ({msg})") from None
        raise ImageDecodeError(label, f"corrupt image data ({msg})") from None
    except (ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError) as e:
        raise ImageDecodeError(label, f"corrupt image data ({type(e).__name__}: {e})") from None


def check_header(data: bytes, label: str, limits: ImageLimits) -> Image.Image:
    """The one header check of every decode path (the CPU decode here, the GPU decode of
    :mod:`deepmetric.training.data`): open ``data`` lazily (format and size from the header, no pixel
    decoded) and apply ``limits`` (:func:`check_size`). Returns the opened image (``format``, ``mode``,
    ``size``, EXIF readable; ``load()`` decodes it). Raises :class:`ImageDecodeError` (empty, not an image,
    corrupt header) or :class:`ImageTooLargeError`, naming ``label`` and the parameter of the limit."""
    if not data:
        raise ImageDecodeError(label, "empty file (0 bytes)")
    with _pillow_errors(label, len(data), limits.max_pixels):
        img = Image.open(io.BytesIO(data))
        check_size(label, img.size, limits)
    return img


def _decode(data: bytes, label: str, limits: ImageLimits) -> Image.Image:
    """:func:`check_header`, then the full decode (catches truncated data)."""
    img = check_header(data, label, limits)
    with _pillow_errors(label, len(data), limits.max_pixels):
        img.load()
    return img


_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 degrees


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image once its EXIF orientation is applied (unreadable EXIF: as
    stored)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF is not fatal for the size; open_image applies what it can
        orientation = 1
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def image_size(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    limits: ImageLimits = ImageLimits(),
) -> tuple[int, int]:
    """``(width, height)`` after EXIF orientation, after fully decoding the file (same checks and errors
    as :func:`open_image`, without the cost of rotating and converting the pixels)."""
    data, label = _read(path_or_bytes, name)
    return oriented_size(_decode(data, label, limits))


def open_image(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    name: str | None = None,
    limits: ImageLimits = ImageLimits(),
) -> Image.Image:
    """Decode a file path or raw bytes into an RGB image, EXIF orientation applied.

    ``limits`` refuses images with more than ``max_pixels`` pixels (``None``: Pillow's limit) as
    decompression bombs, and images whose longer side is more than ``max_aspect_ratio`` times the shorter one
    (``None``: no limit), both from the header, before decoding (:func:`check_header`,
    :class:`ImageTooLargeError`). ``name`` is used in error messages for bytes input (e.g. an upload's file
    name). Raises :class:`ImageDecodeError` for missing, empty, truncated and non-image input.
    """
    data, label = _read(path_or_bytes, name)
    img = _decode(data, label, limits)
    try:
        img = ImageOps.exif_transpose(img) or img
        out = _to_rgb(img)
        out.load()
    except (OSError, ValueError, SyntaxError, struct.error, EOFError, IndexError, TypeError) as e:
        raise ImageDecodeError(label, f"corrupt image data ({type(e).__name__}: {e})") from None
    return out

