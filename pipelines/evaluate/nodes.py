"""Thin nodes: the trained model file → metrics.json, baselines.json and the retrieval grid PNG."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.evaluation.protocol import EvaluateConfig, evaluate_model, retrieval_grid_png
from deepmetric.runtime import init_seed, seed_everything
from deepmetric.training.model_io import build_method, load_model, weights_sha256


def evaluate(
    trained_model: dict[str, Any], manifest: pd.DataFrame, data: dict[str, Any], evaluate: dict[str, Any]
) -> tuple[dict[str, float], dict[str, dict[str, float]], bytes]:
    data_cfg = parse_params(DataParams, data, "data")
    cfg = parse_params(EvaluateConfig, evaluate, "evaluate")
    method, spec = load_model(trained_model)
    untrained, name = None, "untrained"
    if cfg.baselines:
        # The same network as training started from: same seed, same (pretrained) weights.
        from deepmetric.training.config import parse_train

        tcfg, params = parse_train(trained_model["train"])
        name = "pretrained" if tcfg.backbone.pretrained else "untrained"
        seed_everything(init_seed(tcfg.seed))
        untrained = build_method(tcfg, params, trained_model["num_classes"]).eval()
    metrics, baselines, grid = evaluate_model(
        method, untrained, name, manifest, data_cfg.root, data_cfg.dataset, spec, cfg, data_cfg.limits
    )
    metrics["best_epoch"] = int(trained_model.get("best_epoch", -1))
    # Which weights these figures belong to: the bundle stage ships them only with a model exported from them.
    metrics["model_weights_sha256"] = weights_sha256(trained_model["state_dict"])
    png = retrieval_grid_png(grid, data_cfg.root, spec, cfg.grid, data_cfg.limits)
    return metrics, baselines, png
