"""The one definition of the model's input: :class:`InputSpec`, the evaluation transform and the training one.

``eval_image`` is *the* evaluation transform (evaluation, ONNX parity, index building and the server all call
it): resize the shorter side to ``resize`` with PIL bilinear, then centre-crop ``crop``; it returns ``uint8``
pixels, normalisation happens inside the model (``mean``/``std`` of the spec).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from deepmetric.data.images import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageLimits, ImageTooLargeError, open_image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "CropParams", "InputSpec", "RandomCrop", "TrainTransform", "augmentation",
    "box_pixels", "crop_to_box", "eval_image", "load_eval_image", "random_erase_", "resize_shorter", "sample_resized_crop", "train_transform",
]


class InputSpec(BaseModel):
    """What the model expects: shorter side resized to ``resize``, centre ``crop`` × ``crop``, RGB ``uint8``
    in, normalised inside the model by ``(x / 255 - mean) / std``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resize: int = 64
    crop: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @field_validator("resize", "crop")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be a positive pixel count, got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _std_positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std values must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _crop_fits(self) -> InputSpec:
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        return self


def resize_shorter(img: Image.Image, size: int, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Resize so the shorter side is ``size`` (aspect kept, longer side truncated like torchvision).

    The resized image is the one intermediate whose size the input does not bound (a thin 1×100,000 image
    becomes 64×6,400,000): above ``max_pixels`` (``None``: no limit) it is refused *before* resizing, with
    :class:`~deepmetric.data.images.ImageTooLargeError` quoting the limit.
    """
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return img
    if max_pixels is not None and new_w * new_h > max_pixels:
        raise ImageTooLargeError(
            None,
            f"refused: resizing {w}x{h} to a shorter side of {size} would make {new_w}x{new_h} = "
            f"{new_w * new_h:,} pixels, above the limit of {max_pixels:,} (parameter max_pixels)",
        )
    return img.resize((new_w, new_h), Image.BILINEAR)


def box_pixels(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A bounding box ``(x_1, y_1, x_2, y_2)`` as the whole pixels it covers, ``(left, top, right, bottom)``
    (outward to whole pixels, clipped to ``size``)."""
    w, h = size
    x1, y1, x2, y2 = box
    left, top = max(0, math.floor(x1)), max(0, math.floor(y1))
    right, bottom = min(w, math.ceil(x2)), min(h, math.ceil(y2))
    return left, top, right, bottom


def crop_to_box(img: Image.Image, box: tuple[float, float, float, float] | None,
                name: str | None = None) -> Image.Image:
    """``img`` (as displayed, EXIF applied) cut to ``box`` (None: unchanged). A box with no pixel inside the
    image is an :class:`~deepmetric.data.images.ImageDecodeError` naming ``name`` (validation refuses such a box
    before any stage reads it)."""
    if box is None:
        return img
    left, top, right, bottom = box_pixels(box, img.size)
    if right <= left or bottom <= top:
        raise ImageDecodeError(name, f"bounding box {tuple(box)} has no pixel inside the {img.size[0]}x{img.size[1]} "
                                     "image")
    if (left, top, right, bottom) == (0, 0, *img.size):
        return img
    return img.crop((left, top, right, bottom))


def eval_image(img: Image.Image, spec: InputSpec, *, limits: ImageLimits = ImageLimits()) -> np.ndarray:
    """Evaluation transform: RGB ``PIL.Image`` → ``uint8`` array of shape ``(crop, crop, 3)``. No intermediate
    has more than ``limits.max_pixels`` pixels (see :func:`resize_shorter`)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = resize_shorter(img, spec.resize, limits.max_pixels)
    w, h = img.size
    c = spec.crop
    left = int(round((w - c) / 2.0))
    top = int(round((h - c) / 2.0))
    if (left, top, w, h) != (0, 0, c, c):
        img = img.crop((left, top, left + c, top + c))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_eval_image(
    source,
    spec: InputSpec,
    *,
    limits: ImageLimits = ImageLimits(),
    name: str | None = None,
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """A file path or bytes → the evaluation transform's ``uint8 (crop, crop, 3)``: :func:`open_image`,
    :func:`crop_to_box` (``box``: the manifest's bounding box, None: the whole image), then :func:`eval_image`,
    with every bound of ``limits`` applied (pixels and aspect ratio from the header, before decoding; the resize
    intermediate before resizing). Errors name the file (or ``name``)."""
    img = open_image(source, name=name, limits=limits)
    label = name or ("<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    img = crop_to_box(img, box, label)
    try:
        return eval_image(img, spec, limits=limits)
    except ImageTooLargeError as e:
        raise ImageTooLargeError(label, e.reason) from None


@dataclass(frozen=True)
class CropParams:
    """One training crop: the box ``(left, top, width, height)`` in the source image and whether to mirror it."""

    left: int
    top: int
    width: int
    height: int
    flip: bool


def sample_resized_crop(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """The Inception-style random crop box (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform),
    drawn from torch's global generator: up to 10 tries, then the largest centred box within ``ratio``.
    Returns ``(left, top, w, h)``."""
    import torch

    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(log_lo, log_hi)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)))
            left = int(torch.randint(0, width - w + 1, size=(1,)))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


class TrainTransform:
    """Training augmentation: random resized crop to ``spec.crop`` (+ optional horizontal flip).

    The randomness is drawn from torch's global generator in :meth:`params` (the data path seeds it per sample
    from (seed, epoch, step, position), so the draws do not depend on which worker process runs them). The same
    parameters can be applied to a PIL image on the CPU (:meth:`apply_pil`, PIL bilinear with antialiasing, the
    resampling of :func:`eval_image`) or to a decoded tensor on any device (:meth:`apply_tensor`, for GPU-side
    decoding). Calling the object on a PIL image does both steps and returns a ``uint8 (3, crop, crop)`` tensor.
    """

    def __init__(self, spec: InputSpec, scale: tuple[float, float] = (0.5, 1.0), hflip: bool = True,
                 ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        lo, hi = scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {ratio}")
        self.crop = spec.crop
        self.scale = (float(lo), float(hi))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = hflip

    def params(self, width: int, height: int) -> CropParams:
        import torch

        left, top, w, h = sample_resized_crop(width, height, self.scale, self.ratio)
        flip = bool(self.hflip and float(torch.rand(1)) < 0.5)
        return CropParams(left, top, w, h, flip)

    def apply_pil(self, img: Image.Image, p: CropParams):
        import torch

        if img.mode != "RGB":
            img = img.convert("RGB")
        out = img.resize((self.crop, self.crop), Image.BILINEAR, box=(p.left, p.top, p.left + p.width, p.top + p.height))
        if p.flip:
            out = out.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)))

    def apply_tensor(self, x, p: CropParams):
        """``x``: ``uint8 (3, H, W)`` on any device → ``uint8 (3, crop, crop)`` on the same device."""
        import torch
        import torch.nn.functional as F

        patch = x[:, p.top : p.top + p.height, p.left : p.left + p.width].unsqueeze(0).float()
        out = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=True)
        out = out[0].round_().clamp_(0, 255).to(torch.uint8)
        return out.flip(-1) if p.flip else out

    def __call__(self, img: Image.Image):
        return self.apply_pil(img, self.params(*img.size))


def train_transform(
    spec: InputSpec,
    scale: tuple[float, float] = (0.5, 1.0),
    hflip: bool = True,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> TrainTransform:
    """Training augmentation: random resized crop ``(spec.crop, scale, ratio)`` + optional horizontal flip.

    Returns a callable ``PIL.Image -> torch.uint8 tensor (3, crop, crop)`` (a :class:`TrainTransform`).
    Randomness comes from torch's global generator (seed it). Pass ``hflip=False`` for glyphs (a mirrored b
    is a d).
    """
    return TrainTransform(spec, scale=scale, hflip=hflip, ratio=ratio)


# --- paper augmentations (train.augment): fixed-size random crops and Random Erasing ---------------------------------

def random_erase_(x, p: float, area: tuple[float, float], min_aspect: float, fill: tuple[int, int, int]):
    """Random Erasing (Zhong et al. 2017, as the re-id code Intra-Batch uses) on a ``uint8 (3, H, W)`` tensor, in
    place: with probability ``p`` one rectangle of ``area`` (fraction of the image, uniform) and aspect ratio
    uniform in ``[min_aspect, 1/min_aspect]`` is filled with ``fill``; up to 100 tries to fit it. Randomness from
    torch's global generator."""
    import torch

    if p <= 0 or float(torch.rand(1)) >= p:
        return x
    _, height, width = x.shape
    for _ in range(100):
        target = float(torch.empty(1).uniform_(area[0], area[1])) * height * width
        aspect = float(torch.empty(1).uniform_(min_aspect, 1.0 / min_aspect))
        h = int(round((target * aspect) ** 0.5))
        w = int(round((target / aspect) ** 0.5))
        if 0 < w < width and 0 < h < height:
            top = int(torch.randint(0, height - h + 1, (1,)))
            left = int(torch.randint(0, width - w + 1, (1,)))
            x[:, top : top + h, left : left + w] = torch.tensor(fill, dtype=x.dtype).view(3, 1, 1)
            return x
    return x


class RandomCrop:
    """Resize the shorter side to ``resize`` (``square``: both sides, aspect not kept, as Caffe's 256×256 warp),
    then a random ``crop × crop`` window, optional horizontal flip → ``uint8 (3, crop, crop)`` tensor (the
    Ranked-List-Loss / Caffe-style augmentation)."""

    def __init__(self, crop: int, resize: int, hflip: bool, square: bool = False) -> None:
        if resize < crop:
            raise ValueError(f"train.augment.resize ({resize}) must be >= the crop ({crop})")
        self.crop, self.resize, self.hflip, self.square = crop, resize, hflip, square

    def __call__(self, img: Image.Image):
        import torch

        if img.mode != "RGB":
            img = img.convert("RGB")
        img = img.resize((self.resize, self.resize), Image.BILINEAR) if self.square else resize_shorter(img, self.resize)
        w, h = img.size
        top = int(torch.randint(0, h - self.crop + 1, (1,)))
        left = int(torch.randint(0, w - self.crop + 1, (1,)))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        if self.hflip and float(torch.rand(1)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


class _Erasing:
    def __init__(self, base: Callable, p: float, area: tuple[float, float], min_aspect: float,
                 fill: tuple[int, int, int]) -> None:
        self.base, self.p, self.area, self.min_aspect, self.fill = base, p, area, min_aspect, fill

    def __call__(self, img: Image.Image):
        return random_erase_(self.base(img), self.p, self.area, self.min_aspect, self.fill)


def augmentation(spec: InputSpec, augment) -> Callable[[Image.Image], object]:
    """The training transform of a ``train.augment`` block (`deepmetric.training.config.AugmentConfig`):
    ``crop: resized`` → :func:`train_transform` (RandomResizedCrop with ``scale``/``ratio``, flip);
    ``crop: random`` → :class:`RandomCrop` from an image resized to ``augment.resize`` (default ``spec.resize``);
    then Random Erasing when ``augment.erasing.p > 0``. With the defaults this is exactly :func:`train_transform`.
    """
    if augment.crop == "random":
        base = RandomCrop(spec.crop, augment.resize or spec.resize, augment.hflip, augment.square_resize)
    else:
        base = train_transform(spec, scale=(augment.scale_min, augment.scale_max), hflip=augment.hflip,
                               ratio=tuple(augment.ratio))
    er = augment.erasing
    if er.p <= 0:
        return base
    # the fill is given in normalised units (the re-id code erases after Normalize); here pixels are uint8
    fill = tuple(int(round(min(255.0, max(0.0, (v * s + m) * 255.0)))) for v, m, s in zip(er.value, spec.mean, spec.std))
    return _Erasing(base, er.p, tuple(er.area), er.min_aspect, fill)
