"""deepmetric.errors: which errors are the user's (along the chain and inside DataLoader text), unwrapping them from
DataLoader workers, pickling the ones that cross processes. The `kedro run` console output is checked end to end in
tests/pipelines/test_chain.py (bad parameter, corrupt image)."""

from __future__ import annotations

import pickle

import pytest

from deepmetric.data.config import ParamsError
from deepmetric.data.images import ImageDecodeError, ImageTooLargeError
from deepmetric.errors import WorkerInputError, reraise_worker_errors, user_error


def test_user_errors_are_found_along_the_chain_and_inside_dataloader_text():
    assert user_error(ParamsError("train.lr: bad")) == ("ParamsError", "train.lr: bad")
    try:
        try:
            raise ImageDecodeError("a/b.png", "truncated image data")
        except ImageDecodeError as inner:
            raise RuntimeError("node failed") from inner
    except RuntimeError as outer:
        assert user_error(outer) == ("ImageDecodeError", "a/b.png: truncated image data")
    wrapped = RuntimeError("Caught ImageDecodeError in DataLoader worker process 1.\nOriginal Traceback (most recent "
                           "call last):\n  File \"x.py\", line 1\ndeepmetric.data.images.ImageDecodeError: a/b.png: "
                           "truncated image data\n")
    assert user_error(wrapped) == ("ImageDecodeError", "a/b.png: truncated image data")
    assert user_error(RuntimeError("Caught KeyError in DataLoader worker process 0.\nKeyError: 3")) is None
    assert user_error(ZeroDivisionError()) is None


def test_reraise_worker_errors_unwraps_only_user_errors():
    def batches(exc):
        yield 1
        raise exc

    wrapped = RuntimeError("Caught ImageDecodeError in DataLoader worker process 1.\nTraceback …\n"
                           "deepmetric.data.images.ImageDecodeError: a/b.png: truncated image data")
    it = reraise_worker_errors(batches(wrapped))
    assert next(it) == 1
    with pytest.raises(WorkerInputError, match="^a/b.png: truncated image data$") as info:
        next(it)
    assert info.value.kind == "ImageDecodeError" and info.value.__cause__ is wrapped
    with pytest.raises(ParamsError):  # already the user's error: passes through as it is
        list(reraise_worker_errors(batches(ParamsError("x"))))
    with pytest.raises(ZeroDivisionError):  # a bug: untouched
        list(reraise_worker_errors(batches(ZeroDivisionError())))


@pytest.mark.parametrize("exc", [ImageDecodeError("a/b.png", "truncated"), ImageTooLargeError("c.jpg", "too big"),
                                 WorkerInputError("ImageDecodeError", "a/b.png: truncated")])
def test_errors_that_cross_processes_pickle_with_their_type_and_fields(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc) and vars(back) == vars(exc)
