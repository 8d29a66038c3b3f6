"""DML methods behind one interface (`deepmetric.methods.base.Method`), selected by `train.method`.

One method per module; each registers itself in `METHODS` (`deepmetric.methods.base.register`). Importing this
package imports every module in it, so a new method is one file here (plus its test and its page under
docs/methods/): `METHODS.names()` lists every method, `METHODS.names(kind="seed")` the seed methods.
"""

from deepmetric.methods.base import METHODS, BatchConfig, Method, MethodParams, register

METHODS.discover(__name__)

__all__ = ["METHODS", "BatchConfig", "Method", "MethodParams", "register"]
