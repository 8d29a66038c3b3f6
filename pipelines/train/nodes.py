"""Thin nodes: parameters → typed configs → `deepmetric.training.loop.fit`, or, when `train.distributed` asks for
more than one process, `deepmetric.training.launch.launch` (torchrun with the already-validated configuration;
the ranks never start a Kedro session, rank 0's result becomes this node's outputs)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from deepmetric.data.config import DataParams, parse_params
from deepmetric.data.images import ImageLimits
from deepmetric.training.callbacks import LiveLog
from deepmetric.training.config import InputConfig, parse_train
from deepmetric.training.launch import launch, refuse_nested_launch
from deepmetric.training.loop import fit


def train_model(
    manifest: pd.DataFrame, data: dict[str, Any], train: dict[str, Any], model: dict[str, Any], checkpoint_dir: str,
    live_dir: str, cache_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The model file and the run's timings (data/08_reporting/timings/train.json, beside the outputs DVC hashes:
    the model file is a function of the inputs, the time it took is not). The epochs' metrics go to ``live_dir``
    with DVCLive as they happen (`deepmetric.training.callbacks.LiveLog`)."""
    refuse_nested_launch()
    data_cfg = parse_params(DataParams, data, "data")
    cfg, params = parse_train(train)
    spec = parse_params(InputConfig, model, "model")
    limits = ImageLimits(data_cfg.max_pixels, data_cfg.max_aspect_ratio)
    if cfg.distributed.world_size > 1:
        result = launch(manifest, data_cfg.root, cfg, spec, checkpoint_dir=checkpoint_dir, limits=limits,
                        cache_dir=cache_dir, live_dir=live_dir)
    else:
        result = fit(manifest, data_cfg.root, cfg, params, spec, checkpoint_dir=checkpoint_dir, limits=limits,
                     cache_dir=cache_dir, callbacks=[LiveLog(live_dir)])
    return result.payload, result.timings()
