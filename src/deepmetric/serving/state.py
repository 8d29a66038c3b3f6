"""What a server process is serving, and switching it to a new bundle version without dropping a request.

:class:`ServingState` holds the current :class:`Served` (a verified bundle, and its dynamic batcher when
batching is on). A request takes the current one when it starts (:meth:`ServingState.use`) and keeps it to the
end, so it is answered entirely by one bundle version. :meth:`ServingState.reload` loads and verifies the bundle
folder again (every checksum, the lineage, the model runs) off the request path, then swaps it in; a bundle that
fails verification is refused and the old one keeps serving. The old version's batcher finishes what it holds
and stops once its last request is done; nothing refers to an old version after that (no reference cycle), so its
model and index are freed at once, not whenever the garbage collector runs. Every reload is logged (a refusal
with its reason, as an error) and the last one is kept for ``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
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
from deepmetric.runtime import available_cores
from deepmetric.serving.batching import DynamicBatcher
from deepmetric.serving.config import ServerSettings
from deepmetric.store.milvus import GalleryStore, StoreError

__all__ = ["Served", "ServingState", "bundle_summary", "run_bundle"]

# uvicorn's error log: the one `deepmetric serve --log-level` configures (the server's own lines go there too).
log = logging.getLogger("uvicorn.error")


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    lineage = m.get("lineage") or {}
    return {"model_version": m.get("model_version"), "index_version": m.get("index_version"),
            "gallery_version": lineage.get("gallery_version", 0), "gallery_size": bundle.gallery_size,
            "manifest_sha256": m.get("manifest_sha256")}


def run_bundle(bundle: Bundle, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Embed ``images`` with ``bundle`` and, when ``k`` > 0, search its gallery (base and segments, less the
    removed items: :meth:`~deepmetric.bundle.Bundle.knn`; gallery row numbers, not ids)."""
    emb = bundle.embed(images)
    if k <= 0:
        return emb, None, None
    scores, rows = bundle.knn(emb, k)
    return emb, scores, rows


@dataclass
class Served:
    """One bundle version being served: the bundle, its batcher (None: batching off), its in-flight requests, and
    the gallery store searched instead of the bundle's index (None: the bundle's faiss index)."""

    bundle: Bundle
    batcher: DynamicBatcher | None
    store: GalleryStore | None = None
    loaded_at: float = field(default_factory=time.time)
    users: int = 0
    retired: bool = False

    def run(self, images: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Embed ``images`` and, when ``k`` > 0, search the gallery (row numbers, not ids)."""
        return run_bundle(self.bundle, images, k)

    # The gallery searcher: the bundle's index (searched in the batch, with the embedding) or the store.
    def gallery_size(self) -> int:
        """Items in the searched gallery (a store is asked: another process may have changed it)."""
        return self.bundle.gallery_size if self.store is None else self.store.count()

    @property
    def searches_index(self) -> bool:
        """Whether the gallery is the bundle's index (searched with the embedding, in the batch) rather than a
        store (asked after the embedding)."""
        return self.store is None

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close(wait=False)


class ServingState:
    """The served bundle of this process, the decode thread pool, and reloads."""

    def __init__(self, root: str | os.PathLike[str], settings: ServerSettings, bundle: Bundle,
                 store: GalleryStore | None = None) -> None:
        self.root = Path(root)
        self.settings = settings
        self.store = store  # checked against the bundle by the caller (and again on every reload)
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.prep_pool = ThreadPoolExecutor(max_workers=settings.prep_threads or available_cores(),
                                            thread_name_prefix="deepmetric-decode")
        self._current = self._serve(bundle)
        self.reloads = 0
        self.refused_reloads = 0
        self.last_reload: dict[str, Any] | None = None

    def _serve(self, bundle: Bundle) -> Served:
        s = self.settings
        # The batcher runs the bundle, not the Served that holds the batcher: a bound method here would make a
        # reference cycle (Served → batcher → Served.run → Served) that keeps every old version's model and index
        # alive until the garbage collector happens to run (~50 MB per reload of a ResNet-18 bundle).
        batcher = (DynamicBatcher(functools.partial(run_bundle, bundle), max_batch=s.max_batch,
                                  window_s=s.batch_window_ms / 1000.0) if s.batching else None)
        return Served(bundle, batcher, self.store)

    def _record(self, result: dict[str, Any]) -> None:
        self.last_reload = {**result, "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}

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
        unchanged); raises :class:`BundleError` when the folder is refused (the current version stays). Every
        outcome is logged and kept in :attr:`last_reload`."""
        with self._reload_lock:
            old = self._current
            t0 = time.perf_counter()
            try:
                try:
                    bundle = load_bundle(self.root, threads=self.settings.threads)
                except OSError as e:  # unreadable (permissions, I/O): refused like a bad bundle
                    raise BundleError(str(e.filename or self.root), e.strerror or str(e)) from None
                if self.store is not None:
                    try:
                        self.store.check(bundle.manifest)
                    except StoreError as e:  # the collection belongs to another bundle, or is unreachable
                        raise BundleError(f"collection {self.store.collection}", str(e)) from None
            except BundleError as e:
                self.refused_reloads += 1
                self._record({"status": "refused", "error": str(e)})
                log.error("reload of %s refused: %s; still serving model %s, index %s, gallery version %s",
                          self.root, e, *(bundle_summary(old.bundle)[k] for k in
                                          ("model_version", "index_version", "gallery_version")))
                raise
            if bundle.manifest.get("manifest_sha256") == old.bundle.manifest.get("manifest_sha256"):
                result = {"status": "unchanged", **bundle_summary(old.bundle)}
                self._record(result)
                log.info("reload of %s: unchanged (manifest %s)", self.root, result["manifest_sha256"][:12])
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
            self._record(result)
            log.info("reloaded %s: model %s, index %s, gallery version %s (%s items), in %.1f s", self.root,
                     result["model_version"], result["index_version"], result["gallery_version"],
                     result["gallery_size"], result["load_seconds"])
            return result

    async def reload_async(self) -> dict[str, Any]:
        """:meth:`reload` in the event loop's default executor (a load must not block the loop)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.reload)

    def close(self) -> None:
        self._current.close()
        self.prep_pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            self.store.close()
