"""The app's routes, one router per concern (``create_app`` includes them): :mod:`.health` (``/healthz``,
``/v1/info``), :mod:`.admin` (``/v1/admin/reload``), :mod:`.page` (``/``, ``/docs``, thumbnails, examples) and
:mod:`.search` (``/v1/search``, ``/v1/embed``)."""
