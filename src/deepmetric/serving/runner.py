"""Process model of `deepmetric serve`: one uvicorn process, or N worker processes on one listening socket.

The socket is bound here, once, before any worker starts (:func:`deepmetric.serving.http.bind_tcp_socket`:
``IPPROTO_TCP``, so TCP_NODELAY holds on every keep-alive connection in either mode). With ``workers > 1``
uvicorn's supervisor starts the workers (spawned; each loads and verifies the bundle through
``deepmetric.serving.app:app_from_env``) and restarts one that dies.
"""

from __future__ import annotations

import os
import socket
from typing import Any


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
    from uvicorn.supervisors.multiprocess import Multiprocess

    Multiprocess(config, sockets=[sock]).run()
