"""Fixtures of the evaluation tests."""

from __future__ import annotations

import tracemalloc

import pytest


@pytest.fixture
def traced_peak():
    """``run(fn, *args, **kwargs) -> (result, peak bytes)``: the peak of the memory Python and numpy allocated
    during the call (tracemalloc sees numpy's array buffers), to check that a computation stays in bounded
    memory — an N×N matrix or an [N, K] list at the sizes used would exceed the bounds the tests assert."""

    def run(fn, *args, **kwargs):
        tracemalloc.start()
        try:
            return fn(*args, **kwargs), tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return run
