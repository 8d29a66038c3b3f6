"""Thin nodes: the trained model file → metrics.json, baselines.json, the retrieval grid PNG, the match thresholds
(thresholds.json) and the failure report (failures.json, per_class.csv, worst_queries.png)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.evaluation import reports
from deepmetric.evaluation.protocol import (
    EvaluateConfig,
    embed_validation,
    evaluate_model,
    retrieval_grid_png,
    zero_shot_split,
)
from deepmetric.runtime import init_seed, seed_everything
from deepmetric.training.model_io import build_method, load_model, weights_sha256


def evaluate(
    trained_model: dict[str, Any], manifest: pd.DataFrame, data: dict[str, Any], evaluate: dict[str, Any]
) -> tuple[dict[str, float], dict[str, dict[str, float]], bytes, dict[str, Any], dict[str, Any], str, bytes]:
    data_cfg = parse_params(DataParams, data, "data")
    cfg = parse_params(EvaluateConfig, evaluate, "evaluate")
    reports.check_validation_split(manifest, cfg)  # before anything is embedded
    reports.check_rerank(zero_shot_split(manifest, data_cfg.dataset), cfg.rerank)
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
    # Match thresholds on the validation classes, judged on the test classes; where the model fails.
    validation = embed_validation(method, manifest, data_cfg.root, spec, cfg, data_cfg.limits)
    verification, thresholds = reports.thresholds(
        validation, reports.pooled_test_images(grid["split"], grid["query"], grid["gallery"]), cfg)
    failures, per_class = reports.failures(grid["ranking"], grid["split"], cfg)
    failures["verification"] = verification
    metrics.update(reports.decision_metrics(verification, failures))
    metrics.update(reports.reranked_metrics(grid["split"], grid["query"], grid["gallery"], cfg.rerank))
    worst = reports.worst_queries_png(failures, grid["split"], data_cfg.root, spec, data_cfg.limits)
    return metrics, baselines, png, thresholds, failures, per_class, worst
