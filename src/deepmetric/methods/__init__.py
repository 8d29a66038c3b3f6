"""DML methods behind one interface (`deepmetric.methods.base.Method`), selected by `train.method`.

Importing this package registers every method in `METHODS`.
"""

from deepmetric.methods import baselines  # noqa: F401  (registers the baselines)
from deepmetric.methods.base import METHODS, BatchConfig, Method, MethodParams, register

for _seed in ("ranked_list", "intra_batch", "divide_conquer", "sharing"):
    try:
        __import__(f"deepmetric.methods.{_seed}")
    except ModuleNotFoundError as exc:  # a seed method not written yet
        if exc.name != f"deepmetric.methods.{_seed}":
            raise

__all__ = ["METHODS", "BatchConfig", "Method", "MethodParams", "register"]
