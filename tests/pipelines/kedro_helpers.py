"""Run a stage pipeline the way `kedro run` does, against the project's real catalog, rebased into a tmp dir.

Uses the catalog entries of conf/base/catalog.yml (their dataset types: the atomic deepmetric datasets) with
every `filepath` (and `timings_filepath`) moved under `workdir`, and the parameter files of conf/base as `params:`
inputs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(__file__).resolve().parents[2]


def load_params(name: str) -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "conf" / "base" / f"parameters_{name}.yml").read_text())


def make_catalog(workdir: Path, params: dict[str, Any]):
    from kedro.io import DataCatalog

    config = yaml.safe_load((PROJECT / "conf" / "base" / "catalog.yml").read_text())
    config = copy.deepcopy(config)
    for entry in config.values():
        for key in [k for k in entry if k.endswith("filepath")]:  # filepath, and a report's timings_filepath
            entry[key] = str(workdir / entry[key])
    catalog = DataCatalog.from_config(config)
    for key, value in params.items():
        catalog[f"params:{key}"] = value
    return catalog


def run_stage(name: str, workdir: Path, params: dict[str, Any]) -> None:
    import importlib

    from kedro.runner import SequentialRunner

    pipeline = importlib.import_module(f"pipelines.{name}.pipeline").create_pipeline()
    SequentialRunner().run(pipeline, make_catalog(workdir, params))
