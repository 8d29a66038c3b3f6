"""A torch Dataset over manifest rows: decode (`open_image`) → transform → uint8 CHW tensor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from deepmetric.data.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, open_image, safe_join
from deepmetric.data.transforms import InputSpec, eval_image


class ManifestImages(torch.utils.data.Dataset):
    """Images of ``paths`` (relative to ``root``). ``transform`` maps an RGB PIL image to a uint8 CHW tensor
    (default: the evaluation transform of ``spec``). ``cache`` keeps decoded images in memory."""

    def __init__(
        self,
        root: str,
        paths: Sequence[str],
        spec: InputSpec,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        cache: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
    ) -> None:
        self.root = root
        self.paths = list(paths)
        self.spec = spec
        self.transform = transform
        self.max_pixels = max_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self._cache: dict[int, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> Image.Image:
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        img = open_image(safe_join(self.root, self.paths[i]), self.max_pixels, max_aspect_ratio=self.max_aspect_ratio)
        if self._cache is not None:
            self._cache[i] = img
        return img

    def with_transform(self, transform: Callable[[Image.Image], torch.Tensor] | None) -> ManifestImages:
        """The same images (sharing the cache) under another transform."""
        other = ManifestImages.__new__(ManifestImages)
        other.__dict__.update(self.__dict__)
        other.transform = transform
        return other

    def __getitem__(self, i: int) -> torch.Tensor:
        img = self.image(i)
        if self.transform is not None:
            return self.transform(img)
        return torch.from_numpy(np.ascontiguousarray(eval_image(img, self.spec, self.max_pixels).transpose(2, 0, 1)))
