"""Generated fixtures of the deploy-side tests (export, index, serving, their pipelines).

A handful of small PNGs in a few visually distinct classes with a data-contract manifest, a model file made
without training (`build_method` + `make_payload`, ResNet-18 from scratch at 32 px), and a bundle built from
them through the real export → index → bundle code. Importable as ``tests.deploy_fixtures``.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw

from tests.fixtures import png_bytes

CROP = 32
EMBED_DIM = 16

#: The thresholds file of the evaluate stage as the contract between the evaluate and bundle sides shows it (issue 21).
THRESHOLDS = {
    "format": "deepmetric.thresholds/1",
    "score": "cosine",
    "calibrated_on": "val",
    "default_fmr": 0.01,
    "operating_points": [
        {"fmr": 0.01, "threshold": 0.6132, "negative_pairs": 20000, "fmr_ci95": [0.0087, 0.0114],
         "fnmr_test": 0.121, "fnmr_ci95": [0.11, 0.13], "positive_pairs_test": 5120},
        {"fmr": 0.001, "threshold": 0.7421, "negative_pairs": 20000, "fmr_ci95": [0.0006, 0.0015],
         "fnmr_test": 0.301, "fnmr_ci95": [0.28, 0.32], "positive_pairs_test": 5120},
    ],
}


def thresholds_at(*thresholds: float, default: int = 0) -> dict[str, Any]:
    """A thresholds file like :data:`THRESHOLDS` with these thresholds at fmr 0.01, 0.001, … in order."""
    points = [{"fmr": 10.0 ** -(i + 2), "threshold": t, "negative_pairs": 20000} for i, t in enumerate(thresholds)]
    return {**THRESHOLDS, "operating_points": points, "default_fmr": points[default]["fmr"]}


#: Thresholds for the fixture model (untrained: neighbours score 0.95–1.0): a train-class image (not in the gallery)
#: has some neighbours at or above 0.97 and some below (fmr 0.01, the default), none at 0.99 (fmr 0.001); a gallery
#: image finds itself (score 1.0) at both.
FIXTURE_THRESHOLDS = thresholds_at(0.97, 0.99)


PALETTE = [(220, 30, 30), (30, 160, 40), (30, 60, 220), (230, 200, 20), (150, 40, 180), (20, 190, 200),
           (240, 120, 20), (90, 90, 90)]


def draw_image(cls: int, j: int, size: tuple[int, int] = (40, 36)) -> Image.Image:
    """Class = colour + shape; the instance varies position and size a little."""
    rng = np.random.default_rng(1000 * cls + j)
    img = Image.new("RGB", size, (250, 250, 250))
    d = ImageDraw.Draw(img)
    w, h = size
    x0, y0 = int(rng.integers(1, w // 4)), int(rng.integers(1, h // 4))
    x1, y1 = x0 + int(rng.integers(w // 2, 3 * w // 4)), y0 + int(rng.integers(h // 2, 3 * h // 4))
    colour = PALETTE[cls % len(PALETTE)]
    if cls % 2:
        d.ellipse([x0, y0, x1, y1], fill=colour)
    else:
        d.rectangle([x0, y0, x1, y1], fill=colour)
    return img


def make_dataset(root: Path, num_classes: int = 8, per_class: int = 6, train_classes: int = 2) -> pd.DataFrame:
    """PNG files under ``root`` + the validated-manifest table (data contract columns). Test split: the
    classes from ``train_classes`` on, role ``both``."""
    root = Path(root)
    rows = []
    for c in range(num_classes):
        for j in range(per_class):
            rel = f"images/{c:03d}.class_{c}/{j}.png"
            data = png_bytes(draw_image(c, j))
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            rows.append({"path": rel, "label": c, "class_name": f"class_{c}",
                         "split": "train" if c < train_classes else "test", "role": "both",
                         "width": 40, "height": 36, "sha256": hashlib.sha256(data).hexdigest(), "dataset": "glyphs"})
    return pd.DataFrame(rows)


def make_model_payload(embedding_dim: int | None = EMBED_DIM, crop: int = CROP, seed: int = 0,
                       backbone: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model file's payload without training: ResNet-18 (or ``backbone``) from scratch, random head."""
    from deepmetric.training.config import InputConfig, parse_train
    from deepmetric.training.model_io import build_method, make_payload

    torch.manual_seed(seed)
    cfg, params = parse_train({"method": "margin", "embedding_dim": embedding_dim,
                               "backbone": backbone or {"name": "resnet18", "pretrained": False}})
    method = build_method(cfg, params, num_classes=4).eval()
    return make_payload(method, cfg, InputConfig(resize=crop, crop=crop), num_classes=4)


def data_params(root: Path) -> dict[str, Any]:
    return {"dataset": "glyphs", "root": str(root), "max_pixels": 40_000_000}


def model_params(crop: int = CROP) -> dict[str, Any]:
    return {"resize": crop, "crop": crop, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@functools.lru_cache(maxsize=8)
def onnx_model(embedding_dim: int = EMBED_DIM, seed: int = 0, exporter: str = "torchscript") -> bytes:
    """ONNX bytes of ``make_model_payload(embedding_dim, seed=seed)``, exported once per test process."""
    return make_onnx(make_model_payload(embedding_dim, seed=seed), exporter)


def make_onnx(payload: dict[str, Any], exporter: str = "torchscript") -> bytes:
    from deepmetric.export.onnx_export import export_onnx
    from deepmetric.training.model_io import load_model

    method, spec = load_model(payload)
    return export_onnx(method, spec, exporter=exporter)


def evaluated(onnx_bytes: bytes, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metrics`` as the evaluate stage writes them for the weights ``onnx_bytes`` was exported from (these
    fixtures skip training and evaluation)."""
    from deepmetric.export.onnx_export import read_metadata

    base = metrics or {"recall@1": 0.5, "map@r": 0.25, "nmi": 0.4}
    return {**base, "model_weights_sha256": read_metadata(onnx_bytes)["weights_sha256"]}


def write_stage_inputs(workdir: Path, *, model: bool = False, onnx: bool = False) -> tuple[Path, pd.DataFrame]:
    """What a deploy-side stage reads, at its catalog paths under ``workdir``: the dataset (``workdir/dataset``)
    with its validated manifest, plus the trained model file (``model``) and/or the exported model
    (``onnx``). Returns ``(dataset root, manifest)``."""
    from deepmetric.io.datasets import BytesDataset, ParquetDataset, TorchDataset

    root = Path(workdir) / "dataset"
    manifest = make_dataset(root)
    ParquetDataset(str(Path(workdir) / "data/02_intermediate/manifest_validated.parquet")).save(manifest)
    if model:
        TorchDataset(str(Path(workdir) / "data/06_models/model.pt")).save(make_model_payload())
    if onnx:
        BytesDataset(str(Path(workdir) / "data/06_models/model.onnx")).save(onnx_model())
    return root, manifest


def make_bundle(dest: Path, root: Path, manifest: pd.DataFrame, onnx_bytes: bytes,
                index: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                bundle: dict[str, Any] | None = None, thresholds: dict[str, Any] | None = None) -> Path:
    """Build a bundle folder at ``dest`` through the real index + bundle code and the catalog's dataset
    (``thresholds``: the evaluate stage's thresholds.json to carry, e.g. :data:`THRESHOLDS`)."""
    from deepmetric.bundle.build import build_bundle
    from deepmetric.bundle.config import BundleParams
    from deepmetric.index.config import IndexParams
    from deepmetric.index.gallery import build_gallery_index
    from deepmetric.io.datasets import FileTreeDataset

    data, ids, report = build_gallery_index(onnx_bytes, manifest, root, IndexParams(**(index or {})))
    files = build_bundle(onnx_bytes, data, ids, evaluated(onnx_bytes, metrics),
                         BundleParams(**(bundle or {})), index_report=report, dataset="glyphs", image_root=str(root),
                         thresholds=thresholds)
    FileTreeDataset(str(dest)).save(files)
    return Path(dest)
