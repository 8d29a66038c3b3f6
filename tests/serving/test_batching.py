"""The dynamic batcher: concurrent requests run as one batch, each gets its own rows, a lone request never
waits for the window, errors reach every request of the batch."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from deepmetric.serving.batching import DynamicBatcher


class Recorder:
    """run(images, k): embeddings = per-image mean pixel (so each request can check its own rows)."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, images: np.ndarray, k: int):
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(images))
        if self.fail:
            raise RuntimeError("model exploded")
        emb = images.reshape(len(images), -1).mean(axis=1, keepdims=True).astype(np.float32)
        rows = np.tile(np.arange(max(k, 1)), (len(images), 1))
        return emb, (emb.repeat(max(k, 1), axis=1) if k else None), (rows if k else None)


def images(value: int, n: int = 1) -> np.ndarray:
    return np.full((n, 4, 4, 3), value, dtype=np.uint8)


def test_concurrent_requests_run_as_one_batch_and_get_their_own_rows():
    run = Recorder()
    b = DynamicBatcher(run, max_batch=32, window_s=5.0)
    try:
        for _ in range(5):
            b.announce()
        futures = [b.submit(images(10 * i, n=1 + i % 2), k=3) for i in range(5)]
        results = [f.result(timeout=10) for f in futures]
    finally:
        b.close()
    assert run.sizes == [7]  # 1+2+1+2+1 images, one onnxruntime call
    for i, r in enumerate(results):
        assert r.embeddings.shape == (1 + i % 2, 1) and np.all(r.embeddings == 10 * i)
        assert r.scores.shape == (1 + i % 2, 3) and r.rows.shape == (1 + i % 2, 3) and r.batch_images == 7


def test_a_lone_request_does_not_wait_for_the_window():
    run = Recorder()
    b = DynamicBatcher(run, max_batch=32, window_s=60.0)
    try:
        b.announce()
        r = b.submit(images(7), k=0).result(timeout=10)  # would time out if it waited the 60 s window
        assert r.scores is None and np.all(r.embeddings == 7)
        # An announced request that is refused (bad image) is withdrawn and does not hold the others back.
        b.announce()
        b.announce()
        f = b.submit(images(1))
        b.withdraw()
        assert np.all(f.result(timeout=10).embeddings == 1)
    finally:
        b.close()


def test_max_batch_is_respected_and_a_large_request_runs_alone():
    run = Recorder()
    run.gate.clear()  # hold the worker so that everything queues up
    b = DynamicBatcher(run, max_batch=16, window_s=0.0)
    try:
        first = b.submit(images(0), announced=False)
        assert run.entered.wait(10)  # the worker is busy with the first request
        futures = [b.submit(images(i, n=6), announced=False) for i in range(1, 6)]
        big = b.submit(images(9, n=20), announced=False)
        run.gate.set()
        for f in [first, *futures, big]:
            f.result(timeout=10)
    finally:
        b.close()
    assert run.sizes[0] == 1 and all(s <= 16 for s in run.sizes[1:-1]) and run.sizes[-1] == 20
    assert sum(run.sizes) == 1 + 30 + 20


def test_an_error_reaches_every_request_of_the_batch_and_the_batcher_goes_on():
    run = Recorder(fail=True)
    b = DynamicBatcher(run, max_batch=32, window_s=5.0)
    try:
        b.announce()
        b.announce()
        futures = [b.submit(images(i)) for i in range(2)]
        for f in futures:
            with pytest.raises(RuntimeError, match="model exploded"):
                f.result(timeout=10)
        run.fail = False
        assert np.all(b.submit(images(3), announced=False).result(timeout=10).embeddings == 3)
    finally:
        b.close()
    assert not b._thread.is_alive()


def test_close_finishes_what_is_queued():
    run = Recorder()
    run.gate.clear()
    b = DynamicBatcher(run, max_batch=4, window_s=0.0)
    futures = [b.submit(images(i), announced=False) for i in range(10)]
    closer = threading.Thread(target=b.close)
    closer.start()
    run.gate.set()
    closer.join(10)
    assert all(f.done() and not f.exception() for f in futures)
    with pytest.raises(ValueError):
        DynamicBatcher(run, max_batch=0)
