"""`deepmetric viz [--host 127.0.0.1] [--port 4141] [--build-only]`: the Kedro pipelines drawn by kedro-viz, served
offline from the project folder.

`kedro viz build` writes the static site (kedro-viz's own page and assets, from its installed package, and the
pipelines as JSON under ``build/api/``) to ``build/``; its page asks Google Fonts for a typeface, which this command
removes (the page falls back to the browser's sans-serif), so that opening it fetches nothing from outside the
machine. The site is then served on a loopback port (``--build-only``: build, do not serve).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from deepmetric.cli.common import EXIT_BAD_INPUT, say

BUILD = "build"
# <link> elements of index.html that reach outside the machine (kedro-viz 12.5: Google Fonts preconnect + CSS).
_OUTSIDE_LINK = re.compile(r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>\s*", re.S)


def register(sub) -> None:
    p = sub.add_parser("viz", help="draw the Kedro pipelines (kedro-viz), served offline on a loopback port")
    p.add_argument("--project", default=".", help="the Kedro project folder (default: the current directory)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4141)
    p.add_argument("--build-only", action="store_true", help="write build/ and stop")
    p.set_defaults(handler=viz)


def offline_page(html: str) -> str:
    """kedro-viz's index.html without the elements that load from outside the machine."""
    return _OUTSIDE_LINK.sub("", html)


def build_site(project: Path) -> Path:
    """``kedro viz build`` in ``project``, then its page made offline; returns the site folder. A failed build is a
    ``RuntimeError`` with the end of kedro-viz's output."""
    env = dict(os.environ, KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1")
    proc = subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=project, env=env,
                          capture_output=True, text=True)
    site = project / BUILD
    if proc.returncode != 0 or not (site / "index.html").is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-8:]
        raise RuntimeError(f"`kedro viz build` failed in {project} (exit {proc.returncode}):\n" + "\n".join(tail))
    (site / "telemetry.html").unlink(missing_ok=True)  # heap analytics, used only by `kedro viz run`
    page = site / "index.html"
    page.write_text(offline_page(page.read_text(encoding="utf-8")), encoding="utf-8")
    return site


def viz(args: argparse.Namespace) -> int:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    project = Path(args.project)
    if not (project / "pyproject.toml").is_file() or not (project / "conf").is_dir():
        say(f"--project {args.project}: not a Kedro project folder (no pyproject.toml and conf/)")
        return EXIT_BAD_INPUT
    say("building the pipeline site (kedro viz build) …")
    try:
        site = build_site(project)
    except RuntimeError as e:
        say(str(e))
        return 1
    if args.build_only:
        say(f"wrote {site}")
        return 0

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *a) -> None:  # one line per request would flood the terminal
            pass

    try:
        server = ThreadingHTTPServer((args.host, args.port), partial(Quiet, directory=str(site)))
    except OSError as e:
        say(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")
        return EXIT_BAD_INPUT
    say(f"kedro-viz at http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
