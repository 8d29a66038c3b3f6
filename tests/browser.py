"""Headless Debian Chromium driven by Playwright for Python, for the page tests and docs/screenshots.py.

Playwright is pointed at the system browser (``/usr/bin/chromium`` from the Debian package ``chromium``, or
$DEEPMETRIC_CHROMIUM); it never downloads one. Each launch gets a fresh, empty profile, and the flags that keep
Chromium from calling home (the test machines have no internet; those connections would only fail).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

CHROMIUM = os.environ.get("DEEPMETRIC_CHROMIUM", "/usr/bin/chromium")
REQUIRE_ENV = "DEEPMETRIC_REQUIRE_BROWSER"
HOW_TO_INSTALL = ("install Debian's Chromium to run them: `sudo apt-get install chromium` (Playwright drives "
                  f"{CHROMIUM}; set DEEPMETRIC_CHROMIUM for another path; no browser is downloaded)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-default-apps", "--disable-extensions"]


def missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (`make setup` installs it)"
    path = shutil.which(CHROMIUM) or CHROMIUM
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return f"no Chromium at {CHROMIUM}"
    return None


@contextlib.contextmanager
def chromium(viewport: tuple[int, int] = (1280, 860)) -> Iterator[object]:
    """A Playwright BrowserContext in a fresh user-data-dir (removed afterwards)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="deepmetric-chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=shutil.which(CHROMIUM) or CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": viewport[0], "height": viewport[1]}, accept_downloads=False)
        try:
            yield ctx
        finally:
            ctx.close()


@contextlib.contextmanager
def context_or_skip(timeout_ms: int = 30_000) -> Iterator[object]:
    """`chromium` for a test fixture: without a browser the test skips saying how to install one, or fails when
    $DEEPMETRIC_REQUIRE_BROWSER=1 (CI must run the browser tests)."""
    import pytest

    reason = missing()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}; {HOW_TO_INSTALL}")
        pytest.skip(f"browser tests skipped: {reason}; {HOW_TO_INSTALL}")
    with chromium() as context:
        context.set_default_timeout(timeout_ms)
        yield context
