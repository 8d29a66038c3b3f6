"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}

from deepmetric.params import ParamsCheckHook  # noqa: E402

HOOKS = (ParamsCheckHook(),)
