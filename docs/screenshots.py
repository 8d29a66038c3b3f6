"""Screenshots of the search page with results, for the README (docs/search-page.png, docs/search-page-mobile.png).

    .venv/bin/python docs/screenshots.py --bundle data/09_deploy/bundle --query <image> [--out docs]

Starts `deepmetric serve` on a free loopback port, opens the page in headless Debian Chromium (Playwright, the
same launch as the browser tests: tests/browser.py), uploads the query and saves the page at desktop and phone
widths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import browser  # noqa: E402
from tests.server_fixtures import start_server, stop  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--query", required=True, help="image file to search with")
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    reason = browser.missing()
    if reason:
        print(f"screenshots: {reason}; {browser.HOW_TO_INSTALL}", file=sys.stderr)
        return 2
    from playwright.sync_api import expect

    proc, base = start_server(Path(args.bundle))
    try:
        with browser.chromium(viewport=(1280, 760)) as ctx:
            page = ctx.new_page()
            page.goto(base + "/")
            page.wait_for_selector("#model-info:has-text('gallery of')")
            page.fill("#k", str(args.k))
            page.set_input_files("#file", args.query)
            expect(page.locator("#grid li")).to_have_count(args.k)
            page.wait_for_load_state("networkidle")
            out = Path(args.out)
            page.screenshot(path=str(out / "search-page.png"))
            page.set_viewport_size({"width": 390, "height": 844})
            page.click("#search-btn")  # a search on a narrow screen scrolls the results into view
            page.wait_for_selector("#status:has-text('Top ')")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(300)
            page.screenshot(path=str(out / "search-page-mobile.png"))
            print(f"wrote {out / 'search-page.png'} and {out / 'search-page-mobile.png'}")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
