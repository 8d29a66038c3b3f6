"""What a server process is serving, and switching it to a new bundle version without dropping a request.

:class:`ServingState` holds the current :class:`Served` (a verified bundle, and its dynamic batcher when
batching is on). A request takes the current one when it starts (:meth:`ServingState.use`) and keeps it to the
end, so it is answered entirely by one bundle version. :meth:`ServingState.reload` loads and verifies the bundle
folder again (every checksum, the lineage, the model runs) off the request path, then swaps it in; a bundle that
fails verification is refused and the old one keeps serving. The old version's batcher finishes what it holds
and stops once its last request is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.bundle import Bundle, BundleError, load_bundle
from deepmetric.serving.batching import DynamicBatcher
from deepmetric.serving.config import ServerSettings

__all__ = ["Served", "ServingState", "bundle_summary"]


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    lineage = m.get("lineage") or {}
    return {"model_version": m.get("model_version"), "index_version": m.get("index_version"),
            "gallery_version": lineage.get("gallery_version", 0), "gallery_size": bundle.gallery_size,
            "manifest_sha256": m.get("manifest_sha256")}


@dataclass
class Served:
    """One bundle version being served: the bundle, its batcher (None: batching off), its in-flight requests."""

    bundle: Bundle
    batcher: DynamicBatcher | None
    loaded_at: float = field(default_factory=time.time)
    users: int = 0
    retired: bool = False

    def run(self, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Embed ``images`` and, when ``k`` > 0, search the index (row numbers, not ids)."""
        emb = self.bundle.embed(images)
        if k <= 0:
            return emb, None, None
        scores, rows = self.bundle.index.search(np.ascontiguousarray(emb, dtype=np.float32), k)
        return emb, scores, rows

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(wait=False)


class ServingState:
    """The served bundle of this process, the decode thread pool, and reloads."""

    def __init__(self, root: str | os.PathLike[str], settings: ServerSettings, bundle: Bundle) -> None:
        self.root = Path(root)
        self.settings = settings
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.prep_pool = ThreadPoolExecutor(max_workers=settings.prep_threads or os.cpu_count() or 1,
                                            thread_name_prefix="deepmetric-decode")
        self._current = self._serve(bundle)
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None

    def _serve(self, bundle: Bundle) -> Served:
        s = self.settings
        served = Served(bundle, None)
        if s.batching:
            served.batcher = DynamicBatcher(served.run, max_batch=s.max_batch, window_s=s.batch_window_ms / 1000.0)
        return served

    @property
    def current(self) -> Served:
        return self._current

    @contextlib.contextmanager
    def use(self) -> Iterator[Served]:
        """The current version, kept for the whole request (a swap meanwhile does not affect it)."""
        with self._lock:
            served = self._current
            served.users += 1
        try:
            yield served
        finally:
            with self._lock:
                served.users -= 1
                done = served.retired and served.users == 0
            if done:
                served.close()

    def reload(self) -> dict[str, Any]:
        """Load and verify the bundle folder again and serve it. Returns what happened (``status``: reloaded /
        unchanged); raises :class:`BundleError` when the folder is refused (the current version stays)."""
        with self._reload_lock:
            old = self._current
            t0 = time.perf_counter()
            try:
                bundle = load_bundle(self.root, threads=self.settings.threads)
            except BundleError as e:
                self.last_reload = {"status": "refused", "error": str(e), "at": time.time()}
                raise
            if bundle.manifest.get("manifest_sha256") == old.bundle.manifest.get("manifest_sha256"):
                result = {"status": "unchanged", **bundle_summary(old.bundle)}
                self.last_reload = {**result, "at": time.time()}
                return result
            new = self._serve(bundle)
            with self._lock:
                self._current = new
                old.retired = True
                idle = old.users == 0
            if idle:
                old.close()
            self.reloads += 1
            result = {"status": "reloaded", **bundle_summary(bundle), "previous": bundle_summary(old.bundle),
                      "load_seconds": round(time.perf_counter() - t0, 3)}
            self.last_reload = {**result, "at": time.time()}
            return result

    async def reload_async(self) -> dict[str, Any]:
        """:meth:`reload` in the event loop's default executor (a load must not block the loop)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.reload)

    def close(self) -> None:
        self._current.close()
        self.prep_pool.shutdown(wait=False, cancel_futures=True)
