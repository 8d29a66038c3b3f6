"""`deepmetric viz`: kedro-viz's drawing of the project's pipelines, built and served offline, checked in a real
browser (headless Debian Chromium, as the search page: tests/browser.py)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from deepmetric.cli.viz import offline_page
from tests import browser
from tests.fixtures import free_port
from tests.project_fixtures import make_project

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

# The Kedro nodes of the default pipeline (deepmetric.pipeline_registry: every stage after glyphs), as kedro-viz
# labels them.
NODES = ["ingest", "run_validation", "gate_on_validation", "train_model", "evaluate", "export", "index", "bundle"]


def _viz(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepmetric.cli", "viz", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_the_page_loses_only_its_outside_links():
    page = ('<head>\n  <link rel="shortcut icon" href="./favicon.ico" />\n'
            '  <link rel="preconnect" href="https://fonts.googleapis.com" />\n'
            '  <link\n  href="https://fonts.googleapis.com/css2?family=Inter&display=swap"\n  rel="stylesheet"\n  />\n'
            '  <link rel="stylesheet" crossorigin href="./assets/index.css">\n</head>')
    out = offline_page(page)
    assert "https://" not in out
    assert './favicon.ico' in out and './assets/index.css' in out


def test_not_a_project_is_exit_3(tmp_path):
    proc = _viz("--project", str(tmp_path), "--build-only")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3 and "not a Kedro project folder" in err and "Traceback" not in err


def test_the_pipelines_in_a_browser_with_nothing_fetched_from_outside(tmp_path):
    with browser.context_or_skip(timeout_ms=60_000) as ctx:
        (tmp_path / "project").mkdir()
        project = make_project(tmp_path / "project")
        port = free_port()
        proc = _viz("--project", str(project), "--port", str(port))
        try:
            deadline, line = time.monotonic() + 300, ""
            while "kedro-viz at" not in line:
                line = proc.stderr.readline()
                assert line or proc.poll() is None, f"deepmetric viz ended ({proc.poll()}): {proc.stderr.read()}"
                assert time.monotonic() < deadline, "deepmetric viz did not start serving"
            base = f"http://127.0.0.1:{port}"
            assert base in line
            html = (project / "build/index.html").read_text()
            assert "https://" not in html and not (project / "build/telemetry.html").exists()

            page = ctx.new_page()
            outside = []
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((base, "blob:", "data:")) else None)
            page.goto(base + "/")
            # every node of every stage is drawn in the flowchart, with the datasets between them
            tasks = page.locator("svg g.pipeline-node--task")
            tasks.nth(len(NODES) - 1).wait_for(state="attached")
            assert sorted(tasks.all_text_contents()) == sorted(NODES)
            assert {"trained_model", "validated_manifest", "deploy_bundle"} <= set(
                page.locator("svg g.pipeline-node--data").all_text_contents())
            page.screenshot(path=str(tmp_path / "viz.png"))
            assert outside == [], "fetched from outside the machine"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
