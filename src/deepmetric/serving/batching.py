"""Dynamic batching: concurrent requests' images run through onnxruntime (and faiss) as one batch.

One worker thread per served bundle owns the model. A request *announces* itself when its body has been read
(:meth:`DynamicBatcher.announce`), decodes its images in a thread pool, then *submits* them
(:meth:`DynamicBatcher.submit`). The worker thread takes what is queued and, while other announced requests are
still decoding and the batch has room, waits for them up to ``window_s`` after it started assembling the batch
(Triton's ``max_queue_delay``); then it runs ``run(images, k)`` once on the concatenation (at most
``max_batch`` images, a single larger request alone) and hands every request its rows. A lone request is never
held back: with nothing else announced it runs at once, so one client sees no added latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BatchResult", "DynamicBatcher"]


@dataclass
class BatchResult:
    """One request's rows of a batch: embeddings, and (when it asked for k > 0) scores and row numbers."""

    embeddings: np.ndarray
    scores: np.ndarray | None = None
    rows: np.ndarray | None = None
    batch_images: int = 0  # how many images the batch it ran in held (for the response header / stats)


@dataclass
class _Item:
    images: np.ndarray
    k: int
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    """``run(images uint8 [N,H,W,3], k) -> (embeddings [N,d], scores [N,k] | None, rows [N,k] | None)``, called
    from one thread on batches of up to ``max_batch`` images gathered within ``window_s``."""

    def __init__(self, run: Callable[[np.ndarray, int], tuple[np.ndarray, Any, Any]], max_batch: int = 32,
                 window_s: float = 0.002, name: str = "deepmetric-batcher") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self._run = run
        self.max_batch = int(max_batch)
        self.window_s = float(window_s)
        self._cv = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._announced = 0
        self._closing = False
        self.batches = 0
        self.images = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- the request side ---------------------------------------------------------------------------------
    def announce(self) -> None:
        """A request is decoding its images and will submit (or :meth:`withdraw`) shortly."""
        with self._cv:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request will not submit (its images were refused)."""
        with self._cv:
            self._announced -= 1
            self._cv.notify_all()

    def submit(self, images: np.ndarray, k: int = 0, announced: bool = True) -> Future:
        """Queue one request's images; the future resolves to its :class:`BatchResult`."""
        item = _Item(images, int(k))
        with self._cv:
            if announced:
                self._announced -= 1
            self._queue.append(item)
            self._cv.notify_all()
        return item.future

    def close(self, wait: bool = True) -> None:
        """Finish what is queued or announced, then stop the worker thread."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if wait:
            self._thread.join()

    # --- the worker thread --------------------------------------------------------------------------------
    def _queued_images(self) -> int:
        return sum(len(it.images) for it in self._queue)

    def _take(self) -> list[_Item] | None:
        with self._cv:
            while not self._queue:
                if self._closing and self._announced <= 0:
                    return None
                self._cv.wait(0.5 if self._closing else None)
            deadline = time.monotonic() + self.window_s
            while self._announced > 0 and self._queued_images() < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch = [self._queue.popleft()]
            n = len(batch[0].images)
            while self._queue and n + len(self._queue[0].images) <= self.max_batch:
                item = self._queue.popleft()
                batch.append(item)
                n += len(item.images)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                images = live[0].images if len(live) == 1 else np.concatenate([it.images for it in live])
                k = max(it.k for it in live)
                emb, scores, rows = self._run(images, k)
            except BaseException as e:  # noqa: BLE001 - handed to every waiting request
                for it in live:
                    it.future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(images)
            start = 0
            for it in live:
                stop = start + len(it.images)
                it.future.set_result(BatchResult(
                    emb[start:stop],
                    None if scores is None or it.k == 0 else scores[start:stop, : it.k],
                    None if rows is None or it.k == 0 else rows[start:stop, : it.k],
                    len(images),
                ))
                start = stop
