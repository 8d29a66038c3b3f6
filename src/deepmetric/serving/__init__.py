"""The HTTP service over a verified bundle (FastAPI on uvicorn), in FastAPI's "bigger applications" layout.

- :mod:`~deepmetric.serving.app` — ``create_app`` assembles the app: lifespan (reload signals), exception handlers,
  routers, static mounts; ``app_from_env`` builds it in a ``--workers N`` worker.
- :mod:`~deepmetric.serving.routers` — one router per concern: ``search`` (``/v1/search``, ``/v1/embed``),
  ``admin`` (``/v1/admin/reload``), ``page`` (``/``, ``/docs``, thumbnails, examples), ``health``
  (``/healthz``, ``/v1/info``).
- :mod:`~deepmetric.serving.dependencies` — what handlers get injected: the serving state, the settings, the
  admin check.
- :mod:`~deepmetric.serving.multipart` — the uploaded images of a request body (plain function, no HTTP);
  :mod:`~deepmetric.serving.errors` — the 4xx JSON error shape and its codes; :mod:`~deepmetric.serving.responses`.
- :mod:`~deepmetric.serving.state` (the served bundle version, reloads), :mod:`~deepmetric.serving.batching`
  (dynamic batching), :mod:`~deepmetric.serving.http` (uvicorn protocol, socket), :mod:`~deepmetric.serving.runner`
  (one process or N workers), :mod:`~deepmetric.serving.config` (``ServerSettings``).

The bundle itself (format, reading, writing) is :mod:`deepmetric.bundle`; the command line, :mod:`deepmetric.cli`.
"""

from deepmetric.serving.config import ServerSettings

__all__ = ["ServerSettings"]
