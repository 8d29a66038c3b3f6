"""How `kedro run` / `dvc repro` report a wrong input: the message, not 60 lines of Kedro and click frames.

The errors below mean "the parameters, the dataset or an artefact is wrong" and their messages name the problem
(the parameter key, the file, the rank that died). Under the `kedro` command, an uncaught one prints

    error: <its message>
    (<its type>; the traceback is in logs/deepmetric.log)

on stderr and exits 1. Anything else — a bug — keeps Python's full traceback. In-process use (a notebook, pytest,
`KedroSession.run`) is untouched: the hook is installed only when the process is the `kedro` command.

The types are matched by name along the exception's MRO and its cause/context chain, so installing the hook at
start-up imports none of the modules that define them (great-expectations alone takes seconds to import).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

USER_ERRORS = frozenset({
    "deepmetric.data.config.ParamsError",
    "deepmetric.data.readers.common.DatasetLayoutError",
    "deepmetric.data.manifest.BadFilesError",
    "deepmetric.data.images.ImageDecodeError",
    "deepmetric.data.images.PathEscapeError",
    "deepmetric.data.cache.StaleManifestError",
    "deepmetric.models.backbones.base.BackboneError",
    "deepmetric.validation.suite.ValidationFailed",
    "deepmetric.export.parity.ParityError",
    "deepmetric.export.quantize.QuantizationError",
    "deepmetric.index.build.IndexBuildError",
    "deepmetric.training.launch.DistributedRunError",
    "deepmetric.bundle.format.BundleError",
    "deepmetric.errors.WorkerInputError",
})

log = logging.getLogger(__name__)


class WorkerInputError(ValueError):
    """One of USER_ERRORS raised in a DataLoader worker process, as the main process sees it: torch re-raises it as
    a RuntimeError whose text is the worker's whole traceback (Kedro's "failed with error" line would print all of
    it). ``kind`` is the original type's name; the message is the original message."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)

    def __reduce__(self):
        return type(self), (self.kind, str(self))


def reraise_worker_errors(batches: Iterable[T]) -> Iterator[T]:
    """Iterate a DataLoader; a user error from one of its workers comes out as a WorkerInputError (chained)."""
    try:
        yield from batches
    except Exception as exc:
        found = None if _is_user_error(exc) else user_error(exc)
        if found is None:
            raise
        raise WorkerInputError(*found) from exc


def _is_user_error(exc: BaseException) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in USER_ERRORS for c in type(exc).__mro__)


def user_error(exc: BaseException | None) -> tuple[str, str] | None:
    """(type name, message) of the first exception along `exc`'s cause/context chain whose type (or a base) is
    one of USER_ERRORS. A DataLoader worker's error arrives in the training/evaluation process as a RuntimeError
    ("Caught ImageDecodeError in DataLoader worker process 1. Original Traceback …"): its original type and
    message are read back from the last "<module>.<Type>: " line of that text."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _is_user_error(exc):
            return getattr(exc, "kind", type(exc).__name__), str(exc)
        text = str(exc)
        if "DataLoader worker process" in text:
            for name in USER_ERRORS:
                at = text.rfind(f"\n{name}: ")
                if at >= 0:
                    return name.rsplit(".", 1)[1], text[at + len(name) + 3:].strip()
        exc = exc.__cause__ or exc.__context__
    return None


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    found = user_error(exc)
    if found is None:
        sys.__excepthook__(kind, exc, tb)
        return
    name, message = found
    # INFO: the console handlers show WARNING and up (conf/logging.yml), so the traceback goes to the file only
    log.info("stopped by %s", name, exc_info=(kind, exc, tb))
    print(f"error: {message}\n({name}; the traceback is in logs/deepmetric.log)", file=sys.stderr)
    sys.stderr.flush()


def install_cli_excepthook() -> None:
    """Report USER_ERRORS by message when this process is the `kedro` command (`kedro run`, `dvc repro`)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    is_kedro = argv0.name == "kedro" or (argv0.name == "__main__.py" and argv0.parent.name == "kedro")  # python -m
    if is_kedro and sys.excepthook is sys.__excepthook__:
        sys.excepthook = _excepthook
