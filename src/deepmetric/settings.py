"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {"base_env": "base", "default_run_env": "local"}

from deepmetric.errors import install_cli_excepthook  # noqa: E402
from deepmetric.params import ParamsCheckHook  # noqa: E402

install_cli_excepthook()  # `kedro run` / `dvc repro`: a wrong input is reported by its message (deepmetric.errors)

HOOKS = (ParamsCheckHook(),)
