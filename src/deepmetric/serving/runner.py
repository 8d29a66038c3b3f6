"""Process model of `deepmetric serve`: one uvicorn process, or N worker processes on one listening socket.

The socket is bound here, once, before any worker starts (:func:`deepmetric.serving.http.bind_tcp_socket`:
``IPPROTO_TCP``, so TCP_NODELAY holds on every keep-alive connection in either mode). With ``workers > 1``
uvicorn's supervisor starts the workers (spawned; each loads and verifies the bundle through
``deepmetric.serving.app:app_from_env``) and restarts one that dies; a SIGHUP to it becomes a bundle reload in
every worker (:class:`ReloadingSupervisor`: SIGUSR1 to each) instead of uvicorn's restart of the processes, so a
reload closes no keep-alive connection. In one process the app itself reloads on SIGHUP / SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from uvicorn.supervisors.multiprocess import Multiprocess

#: The signal a worker reloads its bundle on (the supervisor turns a SIGHUP into this, for every worker).
WORKER_RELOAD_SIGNAL = signal.SIGUSR1


def describe(bundle: Any) -> dict[str, Any]:
    """What `deepmetric serve` says about the bundle it verified (versions, index, size, dimension)."""
    m = bundle.manifest
    return {"model_version": m["model_version"], "index_version": m["index_version"],
            "index_factory": m.get("index_factory"), "gallery_size": bundle.gallery_size, "dim": bundle.dim}


def verify_in_child(root: str, threads: int) -> dict[str, Any]:
    """Load and verify a bundle; its :func:`describe`, or ``{"error": message}`` (run in a child process by
    `serve --workers N` and by the supervisor on SIGHUP, so that the supervisor keeps no copy of the model)."""
    from deepmetric.bundle import BundleError, load_bundle

    try:
        return describe(load_bundle(root, threads=threads))
    except BundleError as e:
        return {"error": str(e)}


def uvicorn_config(app: Any, *, workers: int = 1, log_level: str = "info", **kw: Any):
    import uvicorn

    from deepmetric.serving.http import JsonErrorH11Protocol

    return uvicorn.Config(app, workers=workers, log_level=log_level, http=JsonErrorH11Protocol,
                          timeout_graceful_shutdown=30, **kw)


def serve_single(app: Any, sock: socket.socket, log_level: str = "info") -> None:
    """One process: the app (already built, bundle loaded) on ``sock``."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, log_level=log_level))
    server.run(sockets=[sock])


def serve_workers(sock: socket.socket, workers: int, env: dict[str, str], log_level: str = "info") -> None:
    """``workers`` processes, each building the app from ``env`` (bundle folder + settings) on ``sock``."""
    os.environ.update(env)
    config = uvicorn_config("deepmetric.serving.app:app_from_env", factory=True, workers=workers,
                            log_level=log_level)
    ReloadingSupervisor(config, sockets=[sock]).run()


class ReloadingSupervisor(Multiprocess):
    """uvicorn's multiprocess supervisor (health checks, restarts), with SIGHUP meaning "reload the bundle in every
    worker". The supervisor first verifies the ``--bundle`` path (in a child process, so that it holds no copy of
    the model): a refused bundle is logged and no worker is disturbed; a good one becomes what a restarted worker
    loads, and every worker reloads it (each verifies it again and keeps serving the old one if it fails)."""

    def handle_hup(self) -> None:
        import logging
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from deepmetric.serving.config import BUNDLE_ENV, BUNDLE_SOURCE_ENV

        log = logging.getLogger("uvicorn.error")
        source = os.environ.get(BUNDLE_SOURCE_ENV)
        if source:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                info = pool.submit(verify_in_child, source, 1).result()
            if "error" in info:
                log.error("SIGHUP: %s; every worker keeps serving the bundle it has", info["error"])
                return
            os.environ[BUNDLE_ENV] = os.path.realpath(source)
            log.info("SIGHUP: %s verified (model %s, index %s, %s items); reloading every worker", source,
                     info["model_version"], info["index_version"], info["gallery_size"])
        for process in self.processes:
            if process.pid is not None and process.process.is_alive():
                try:
                    os.kill(process.pid, WORKER_RELOAD_SIGNAL)
                except ProcessLookupError:  # exited meanwhile; its replacement loads the current bundle
                    pass
