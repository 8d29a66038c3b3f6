"""A torch Dataset over manifest rows: decode (`open_image`, or the on-disk image cache) → transform → uint8 CHW.

Keys are either an index ``i`` (the transform draws from torch's global generator, as any torchvision
transform) or a pair ``(i, seed)``: the transform then draws from a generator seeded with ``seed`` alone, so the
same key gives the same pixels in whichever process (DataLoader worker or main) runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from deepmetric.data.cache import CachedImages
from deepmetric.data.images import ImageLimits, open_image, safe_join
from deepmetric.data.transforms import InputSpec, crop_to_box, eval_image


@contextlib.contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU generator seeded with ``seed``; restore its state afterwards.

    Only the CPU generator: ``torch.manual_seed`` also seeds every accelerator backend, and on a CUDA build
    without a GPU its device probe costs ~5 ms — more than decoding a small image."""
    gen = torch.random.default_generator
    state = gen.get_state()
    gen.manual_seed(seed)
    try:
        yield
    finally:
        gen.set_state(state)


class ManifestImages(torch.utils.data.Dataset):
    """Images of ``paths`` (relative to ``root``). ``transform`` maps an RGB PIL image to a uint8 CHW tensor
    (default: the evaluation transform of ``spec``). ``limits``: the per-image bounds every decode applies.
    ``cached``: read decoded, pre-resized images from an :class:`~deepmetric.data.cache.CachedImages` (same
    order as ``paths``, built with the same ``boxes``) instead of decoding the files. ``boxes``: each image's
    bounding box (``deepmetric.data.contract.boxes_of``; None: whole images), cut out right after decoding."""

    def __init__(
        self,
        root: str,
        paths: Sequence[str],
        spec: InputSpec,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        limits: ImageLimits = ImageLimits(),
        cached: CachedImages | None = None,
        boxes: Sequence[tuple[float, float, float, float] | None] | None = None,
    ) -> None:
        self.root = root
        self.paths = list(paths)
        if boxes is not None and len(boxes) != len(self.paths):
            raise ValueError(f"{len(boxes)} boxes for {len(self.paths)} paths")
        self.boxes = None if boxes is None else list(boxes)
        self.spec = spec
        self.transform = transform
        self.limits = limits
        if cached is not None and len(cached) != len(self.paths):
            raise ValueError(f"the image cache view has {len(cached)} images for {len(self.paths)} paths")
        self.cached = cached

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        if self.cached is not None:
            return self.cached.image(i)  # cut to its box when cached
        img = open_image(safe_join(self.root, self.paths[i]), limits=self.limits)
        return img if self.boxes is None else crop_to_box(img, self.boxes[i], self.paths[i])

    def box(self, i: int) -> tuple[float, float, float, float] | None:
        return None if self.boxes is None else self.boxes[i]

    def with_transform(self, transform: Callable[[Image.Image], torch.Tensor] | None) -> ManifestImages:
        """The same images (sharing the cache) under another transform."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def __getitem__(self, key: int | tuple[int, int]) -> torch.Tensor:
        if isinstance(key, tuple):
            i, seed = key
            with seeded_cpu_rng(int(seed)):
                return self._item(int(i))
        return self._item(int(key))

    def _item(self, i: int) -> torch.Tensor:
        img = self.image(i)
        if self.transform is not None:
            return self.transform(img)
        pixels = eval_image(img, self.spec, limits=self.limits)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))
