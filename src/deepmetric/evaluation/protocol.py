"""The zero-shot protocol of a dataset: which rows are queries and gallery, which Ks, and evaluation of
a trained model next to its baselines (raw pixels; the same network untrained / pretrained-only)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepmetric.data.contract import boxes_of, dataset_info
from deepmetric.data.dataset import ManifestImages
from deepmetric.data.images import ImageLimits
from deepmetric.data.transforms import InputSpec
from deepmetric.evaluation.embed import embed_dataset, method_embedder, pixel_embedder
from deepmetric.evaluation.metrics import evaluate_embeddings, rank_and_evaluate
from deepmetric.evaluation.rerank import RERANKINGS
from deepmetric.evaluation.verification import DEFAULT_MAX_NEGATIVES, check_fmr


class GridConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queries: int = Field(8, ge=1, le=64)
    neighbours: int = Field(6, ge=1, le=32)
    seed: int = 0


class FailuresConfig(BaseModel):
    """``evaluate.failures``: the failure report (failures.json, per_class.csv, worst_queries.png)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(5, ge=1, le=32, description="neighbours shown per worst query and counted for confused pairs")
    worst: int = Field(8, ge=1, le=64, description="worst queries in the report and the grid")
    pairs: int = Field(20, ge=1, description="most confused class pairs in the report")
    classes: int = Field(50, ge=1, description="worst classes listed in failures.json (per_class.csv has all)")


class EvaluateConfig(BaseModel):
    """`evaluate` parameters."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(256, gt=0)
    nmi_seed: int = 0
    baselines: bool = Field(True, description="also evaluate raw pixels and the untrained/pretrained-only net")
    pixel_size: int | None = Field(None, gt=0, description="raw-pixel baseline resolution (null: the crop)")
    device: str = "auto"
    processes: int = Field(1, ge=0, description="processes embedding the test split, each a contiguous shard "
                                                "(0: one per CPU core; with CUDA, one per GPU in turn)")
    num_workers: int | Literal["auto"] = Field("auto", description="DataLoader decode workers (auto: one per core)")
    progress: bool = True
    grid: GridConfig = Field(default_factory=GridConfig)
    fmr: list[float] = Field([0.01, 0.001], description="target false-match rates of the match thresholds")
    default_fmr: float | None = Field(None, description="the bundle's default operating point (null: first fmr)")
    negative_pairs: int = Field(DEFAULT_MAX_NEGATIVES, ge=1, description="most negative pairs sampled per split")
    pairs_seed: int = 0
    failures: FailuresConfig = Field(default_factory=FailuresConfig)
    rerank: Literal[RERANKINGS] = Field("none", description="also report MAP@R / Recall@1 after this re-ranking "
                                                            "(rerank/... keys; benchmarks/evaluation: none helps "
                                                            "Recall@1 on the built-in set)")

    @field_validator("fmr")
    @classmethod
    def _fmr(cls, v: list[float]) -> list[float]:
        return check_fmr(v, "fmr")

    @model_validator(mode="after")
    def _default_fmr(self) -> EvaluateConfig:
        if self.default_fmr is None:
            self.default_fmr = self.fmr[0]
        elif self.default_fmr not in self.fmr:
            raise ValueError(f"default_fmr={self.default_fmr} is not one of fmr {self.fmr}")
        return self


@dataclass
class TestSplit:
    """Queries and gallery of the test split (gallery None = leave-one-out over the queries)."""

    query: pd.DataFrame
    gallery: pd.DataFrame | None
    ks: tuple[int, ...]


def zero_shot_split(manifest: pd.DataFrame, dataset: str) -> TestSplit:
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    if test.empty:
        raise ValueError("the manifest has no `test` rows to evaluate on")
    info = dataset_info(dataset)
    roles = set(test["role"])
    if info.separate_gallery or roles & {"query", "gallery"}:
        q = test[test["role"].isin(["query", "both"])].reset_index(drop=True)
        g = test[test["role"].isin(["gallery", "both"])].reset_index(drop=True)
        if q.empty or g.empty:
            raise ValueError(f"{dataset}: the test split needs both query and gallery rows (roles found: {roles})")
        return TestSplit(q, g, info.recall_ks)
    return TestSplit(test, None, info.recall_ks)


def embed_split(fn: Callable[[torch.Tensor], torch.Tensor], split: TestSplit, root: str, spec: InputSpec,
                batch_size: int, device: torch.device, progress: bool, desc: str, processes: int = 1,
                limits: ImageLimits = ImageLimits(), num_workers: int = 0):
    """``limits``: the per-image bounds of the data parameters (``DataParams.limits``);
    ``num_workers``: DataLoader decode workers (only when ``processes`` is 1: shards already decode in parallel)."""
    from deepmetric.runtime import eval_loader_workers

    def run(df: pd.DataFrame, what: str) -> np.ndarray:
        ds = ManifestImages(root, df["path"], spec, limits=limits, boxes=boxes_of(df))
        workers = eval_loader_workers(num_workers, len(ds), batch_size) if processes == 1 else 0
        return embed_dataset(fn, ds, batch_size, device, num_workers=workers, progress=progress,
                             desc=f"{desc} {what}", processes=processes)

    q = run(split.query, "queries")
    g = run(split.gallery, "gallery") if split.gallery is not None else None
    return q, g


def score(q: np.ndarray, g: np.ndarray | None, split: TestSplit, nmi_seed: int) -> dict[str, float]:
    return evaluate_embeddings(
        q, split.query["label"].to_numpy(),
        g, None if split.gallery is None else split.gallery["label"].to_numpy(),
        ks=split.ks, nmi_seed=nmi_seed,
    )


def evaluate_model(
    method: torch.nn.Module,
    untrained: torch.nn.Module | None,
    untrained_name: str,
    manifest: pd.DataFrame,
    root: str,
    dataset: str,
    spec: InputSpec,
    cfg: EvaluateConfig,
    limits: ImageLimits = ImageLimits(),
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, Any]]:
    """Returns (metrics of the trained model, baselines, what the retrieval grid needs). ``limits``: the
    per-image bounds of the data parameters (``DataParams.limits``)."""
    from deepmetric.runtime import resolve_device, resolve_workers

    device = resolve_device(cfg.device, "evaluate.device")
    workers = resolve_workers(cfg.num_workers)
    split = zero_shot_split(manifest, dataset)
    method = method.to(device)
    q, g = embed_split(method_embedder(method, spec.mean, spec.std), split, root, spec, cfg.batch_size, device,
                       cfg.progress, "trained", cfg.processes, limits, workers)
    metrics, ranking = rank_and_evaluate(
        q, split.query["label"].to_numpy(), g, None if split.gallery is None else split.gallery["label"].to_numpy(),
        ks=split.ks, nmi_seed=cfg.nmi_seed, width=cfg.failures.k)
    metrics["num_queries"] = int(len(split.query))
    metrics["num_gallery"] = int(len(split.gallery) if split.gallery is not None else len(split.query))
    baselines: dict[str, dict[str, float]] = {}
    if cfg.baselines:
        pq, pg = embed_split(pixel_embedder(cfg.pixel_size), split, root, spec, cfg.batch_size, device,
                             cfg.progress, "pixels", cfg.processes, limits, workers)
        baselines["pixels"] = score(pq, pg, split, cfg.nmi_seed)
        if untrained is not None:
            untrained = untrained.to(device)
            uq, ug = embed_split(method_embedder(untrained, spec.mean, spec.std), split, root, spec,
                                 cfg.batch_size, device, cfg.progress, untrained_name, cfg.processes, limits, workers)
            baselines[untrained_name] = score(uq, ug, split, cfg.nmi_seed)
        baselines["trained"] = {k: v for k, v in metrics.items() if not k.startswith("num_")}
    return metrics, baselines, {"split": split, "query": q, "gallery": g, "ranking": ranking}


def validation_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The validation classes' rows (split ``val``): never trained on, never tested on."""
    return manifest[manifest["split"] == "val"].reset_index(drop=True)


def embed_validation(method: torch.nn.Module, manifest: pd.DataFrame, root: str, spec: InputSpec,
                     cfg: EvaluateConfig, limits: ImageLimits = ImageLimits()) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) of the validation classes, where the match thresholds are calibrated."""
    from deepmetric.runtime import resolve_device, resolve_workers

    device = resolve_device(cfg.device, "evaluate.device")
    val = TestSplit(validation_rows(manifest), None, ())
    x, _ = embed_split(method_embedder(method.to(device), spec.mean, spec.std), val, root, spec, cfg.batch_size,
                       device, cfg.progress, "validation", cfg.processes, limits, resolve_workers(cfg.num_workers))
    return x, val.query["label"].to_numpy()


def retrieval_grid_png(grid_input: dict[str, Any], root: str, spec: InputSpec, cfg: GridConfig,
                       limits: ImageLimits = ImageLimits()) -> bytes:
    """A PNG: sampled queries (left column) and their nearest gallery images, green = same class."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepmetric.data.images import safe_join
    from deepmetric.data.transforms import load_eval_image
    from deepmetric.evaluation.knn import knn

    split: TestSplit = grid_input["split"]
    q, g = grid_input["query"], grid_input["gallery"]
    same = g is None
    gallery_df = split.query if same else split.gallery
    n_g = len(gallery_df) - (1 if same else 0)
    k = min(cfg.neighbours, n_g)
    rng = np.random.default_rng(cfg.seed)
    chosen = np.sort(rng.choice(len(split.query), size=min(cfg.queries, len(split.query)), replace=False))
    _, idx = knn(q, q if same else g, k, exclude_self=same)
    fig, axes = plt.subplots(len(chosen), k + 1, figsize=(1.3 * (k + 1), 1.4 * len(chosen)), squeeze=False)

    def show(ax, df: pd.DataFrame, i: int, colour: str | None, title: str) -> None:
        boxes = boxes_of(df.iloc[[i]])
        img = load_eval_image(safe_join(root, df["path"].iloc[i]), spec, limits=limits,
                              box=None if boxes is None else boxes[0])
        ax.imshow(img)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=6)
        if colour:
            for s in ax.spines.values():
                s.set_edgecolor(colour)
                s.set_linewidth(3)

    for row, qi in enumerate(chosen):
        ql = split.query["label"].iloc[qi]
        show(axes[row, 0], split.query, qi, None, f"query {split.query['class_name'].iloc[qi]}"[:18])
        for col, gi in enumerate(idx[qi], start=1):
            hit = gallery_df["label"].iloc[gi] == ql
            show(axes[row, col], gallery_df, gi, "green" if hit else "red", str(gallery_df["class_name"].iloc[gi])[:14])
    fig.suptitle("Nearest neighbours on unseen test classes (green: same class)", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
