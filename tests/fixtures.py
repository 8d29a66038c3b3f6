"""Shared generated fixtures (importable as ``tests.fixtures`` or, with ``tests/`` on sys.path, ``fixtures``)."""

from __future__ import annotations

import contextlib
import io
import os
import socket
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or a rendezvous the test starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(img: Any, fmt: str = "PNG", **save_options: Any) -> bytes:
    """The encoded bytes of a ``PIL.Image`` (``fmt``: any format Pillow writes; options go to ``Image.save``)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_options)
    return buf.getvalue()


def make_tiny_glyphs(
    root: str | os.PathLike[str],
    num_classes: int = 12,
    image_size: int = 64,
    min_fonts: int = 8,
    jitter_copies: int = 0,
    seed: int = 0,
) -> Path:
    """Render a small built-in glyph dataset (CUB layout) into ``root`` and return ``root``.

    12 classes × ~16–22 fonts ≈ 250 PNGs of 64 px in well under a second. Deterministic.
    """
    from deepmetric.data.glyphs import GlyphParams, render_glyph_dataset

    root = Path(root)
    files = render_glyph_dataset(GlyphParams(num_classes=num_classes, image_size=image_size, min_fonts=min_fonts,
                                             jitter_copies=jitter_copies, seed=seed))
    for rel, data in files.items():
        dest = root.joinpath(*rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return root


def make_bars(root: str | os.PathLike[str], split_of, num_classes: int = 12, per_class: int = 6, size: int = 36):
    """Classes of coloured bars (class c: a bar at height 2c, its own colour; images jitter in x and shade).

    Writes ``c{c:02d}/{j}.png`` under ``root`` and returns the manifest rows' DataFrame (path, label,
    class_name, split, role); ``split_of(c)`` gives each class's split. Fast and learnable in a few steps.
    """
    import numpy as np
    import pandas as pd
    from PIL import Image, ImageDraw

    root = Path(root)
    rng = np.random.default_rng(0)
    step = max(1, 250 // num_classes)
    rows = []
    for c in range(num_classes):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            img = Image.new("RGB", (size, size), "white")
            x = int(rng.integers(0, 8))
            colour = (step * c, 250 - step * c, 37 * j % 255)
            ImageDraw.Draw(img).rectangle([x, 2 * c, x + 14, 2 * c + 9], fill=colour)
            path = f"c{c:02d}/{j}.png"
            img.save(root / path)
            rows.append({"path": path, "label": c, "class_name": f"c{c}", "split": split_of(c), "role": "both"})
    return pd.DataFrame(rows)


#: Per-image limits of the ``data`` parameters set stricter than their defaults, each with the size of an image
#: that this limit refuses and the defaults accept, and the words of the refusal: a stage whose decode does not
#: receive the parameter accepts the image.
STRICT_LIMITS = {
    "max_aspect_ratio": ({"max_aspect_ratio": 20}, (300, 10), "limit of 20:1 (parameter max_aspect_ratio)"),
    "max_pixels": ({"max_pixels": 10_000}, (120, 100), "limit of 10,000 (parameter max_pixels)"),
}


def plant_image(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    """Overwrite the image file at ``path`` with a plain grey image of ``size`` (format from the suffix)."""
    from PIL import Image

    Image.new("RGB", size, (128, 128, 128)).save(path)


def timm_source(name: str, **kwargs):
    """A timm model with seeded random weights (what a user's checkpoint was saved from), in eval mode."""
    import timm
    import torch

    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def save_weights(model, folder: str | os.PathLike[str], layout: str):
    """Save ``model``'s weights under ``folder`` as a user has them; returns the file. ``layout``: safetensors,
    torch (a plain state dict), state_dict / model (timm's / DeiT's training wrappers), ddp (``module.`` keys),
    dino_teacher (DINO's training checkpoint: student + teacher with ``backbone.``/``head.`` keys, its argparse
    arguments), with_classifier (the same as torch: the model has a head), dinov2 (+ ``mask_token``), open_clip
    (``visual.trunk.`` + a text tower)."""
    import argparse

    import torch

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    path = Path(folder) / f"{layout}.{'safetensors' if layout == 'safetensors' else 'pth'}"
    if layout == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
        return path
    wrapped = {
        "torch": state,
        "with_classifier": state,
        "state_dict": {"state_dict": state, "epoch": 7, "arch": "vit"},
        "model": {"model": state, "epoch": 7},
        "ddp": {f"module.{k}": v for k, v in state.items()},
        "dino_teacher": {
            "student": {f"module.backbone.{k}": v + 1 for k, v in state.items()},
            "teacher": {**{f"backbone.{k}": v for k, v in state.items()},
                        "head.mlp.0.weight": torch.zeros(8, 4), "head.last_layer.weight_g": torch.ones(16, 1)},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", patch_size=16),
        },
        "dinov2": {**state, "mask_token": torch.zeros(1, state["cls_token"].shape[-1])},
        "open_clip": {**{f"visual.trunk.{k}": v for k, v in state.items()},
                      "text.token_embedding.weight": torch.zeros(10, 4), "logit_scale": torch.tensor(4.6)},
    }[layout]
    torch.save(wrapped, path)
    return path


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models: one intra-op thread is as fast and avoids oversubscribing a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_trained_model(payload, size: int, n: int = 3):
    """The method rebuilt from a model file embeds unit vectors of its test width, and its export module computes
    exactly that embedding; returns the embeddings of ``n`` random images."""
    import torch

    from deepmetric.training.model_io import load_model

    model, _ = load_model(payload)
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        emb = model.embed(x)
        torch.testing.assert_close(model.export_module()(x), emb)
    assert emb.shape == (n, model.test_embedding_dim)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(n))
    return emb


def file_tree(*paths: str | os.PathLike[str]) -> dict[str, bytes]:
    """Every file under ``paths`` (files or folders) as ``{path: bytes}``: compare two of them to see that a run
    wrote the same bytes, or that a refused one changed nothing."""
    out = {}
    for base in map(Path, paths):
        for p in ([base] if base.is_file() else sorted(base.rglob("*"))):
            if p.is_file():
                out[str(p)] = p.read_bytes()
    return out


def clustered_embeddings(num_classes: int, dim: int, per_class: int, noise: float, seed: int):
    """A ``split(classes) -> (unit vectors float32 [n, dim], labels)`` drawing ``per_class`` points around each class
    centre (centres and noise from one seeded generator, in call order): labelled embeddings for the verification and
    evaluation-report tests."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))

    def split(classes):
        y = np.repeat(classes, per_class)
        x = centres[y] + noise * rng.normal(size=(len(y), dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y

    return split
