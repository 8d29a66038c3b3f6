"""The model side of preprocessing: uint8 images in, normalised float tensors out.

The host side (decode, resize, centre crop) is `deepmetric.data.transforms.eval_image`; everything after it
happens here, inside the model, so PyTorch evaluation and the ONNX graph share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 (or 0..255 float) NCHW → float NCHW normalised with mean/std; optionally resized to ``size``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], size: int | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.size is not None and (x.shape[-1] != self.size or x.shape[-2] != self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Functional form of `Normalize` for the training loop (no resizing)."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) * 255.0
    return (images.to(torch.float32) - m) / s
