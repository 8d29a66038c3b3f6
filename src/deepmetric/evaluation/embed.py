"""Embed every image of a dataset with a function of uint8 batches, in order, without gradients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


@torch.no_grad()
def embed_dataset(
    fn: Callable[[torch.Tensor], torch.Tensor],
    dataset: torch.utils.data.Dataset,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> np.ndarray:
    """``fn`` takes a uint8 NCHW batch on ``device`` and returns ``[N, D]``; the result is float32 numpy."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        out.append(fn(batch.to(device)).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def method_embedder(method: torch.nn.Module, mean, std) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 batch → the method's test embedding (normalised), in eval mode."""
    from deepmetric.models.preprocess import to_model_input

    def fn(x: torch.Tensor) -> torch.Tensor:
        was_training = method.training
        method.eval()
        try:
            return method.embed(to_model_input(x, mean, std))
        finally:
            method.train(was_training)

    return fn


def pixel_embedder(size: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The raw-pixel baseline: (optionally downsample to ``size``²,) flatten, centre, L2-normalise."""
    import torch.nn.functional as F

    def fn(x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0
        if size is not None:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        v = x.flatten(1)
        return F.normalize(v - v.mean(dim=1, keepdim=True), dim=1)

    return fn
