"""The search page in a real browser: headless Debian Chromium driven by Playwright, against `deepmetric serve`
on a loopback port. Without Chromium these tests skip saying how to install it; with
DEEPMETRIC_REQUIRE_BROWSER=1 (set by .ci/run) they fail instead, so CI cannot pass without running them."""

from __future__ import annotations


import numpy as np
import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the `ctx` fixture skips (or fails in CI) with the reason
    expect = None

from tests import browser

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="session")  # session scope, first argument: checked before the servers are built
def ctx():
    with browser.context_or_skip() as context:
        yield context


def open_page(ctx, base):
    page = ctx.new_page()
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "blob:", "data:")) else None)
    page.goto(base + "/")
    page.wait_for_selector("#model-info:has-text('gallery of')")
    return page, outside


def results(page, count):
    # locator assertions, not wait_for_function: the page's CSP forbids string evaluation in its world
    expect(page.locator("#grid li")).to_have_count(count)
    return page.eval_on_selector_all(
        "#grid li", "els => els.map(e => ({id: +e.dataset.id, label: +e.dataset.label, text: e.innerText}))")


def thumbnails_loaded(page, timeout_s: float = 20.0) -> list[bool]:
    """Whether each result's thumbnail has loaded, polled until all have or ``timeout_s`` passes (the images load
    after the result list appears; a loaded machine can take seconds)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        loaded = page.eval_on_selector_all("#grid img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        if (loaded and all(loaded)) or time.monotonic() > deadline:
            return loaded
        page.wait_for_timeout(100)


def test_upload_a_gallery_image_finds_it_and_its_class_first(ctx, page_server, tmp_path):
    base, bundle, root, manifest = page_server
    import pandas as pd

    ids = pd.read_parquet(bundle / "ids.parquet")
    row = ids.iloc[20]
    page, outside = open_page(ctx, base)
    assert page.is_visible("#examples-section")  # thumbnails on: example queries offered
    page.set_input_files("#file", str(root / row["path"]))
    hits = results(page, 10)
    assert hits[0]["id"] == int(row["id"]) and hits[0]["label"] == int(row["label"])
    assert row["class_name"].replace("_", " ") in hits[0]["text"] and f"id {row['id']}" in hits[0]["text"] and "1.000" in hits[0]["text"]
    assert page.is_visible("#query-preview img") and page.is_hidden("#error")
    loaded = thumbnails_loaded(page)
    assert len(loaded) == 10 and all(loaded), loaded
    # k is adjustable: a new value re-runs the same query
    page.fill("#k", "4")
    page.press("#k", "Enter")
    assert [h["id"] for h in results(page, 4)] == [h["id"] for h in hits[:4]]
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    # narrow screen: one column, nothing wider than the viewport
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    page.screenshot(path=str(tmp_path / "mobile.png"), full_page=True)
    assert not outside, f"the page requested other hosts: {outside}"
    page.close()


def test_text_file_and_oversized_file_show_the_api_error_in_plain_words(ctx, page_server):
    base, *_ = page_server
    page, _ = open_page(ctx, base)
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello, world\n"}])
    page.wait_for_selector("#error:not([hidden])")
    text = page.inner_text("#error")
    assert "not an image" in text and "notes.txt" in text
    assert page.eval_on_selector_all("#grid li", "els => els.length") == 0
    noise = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()  # > the 200 kB limit
    page.set_input_files("#file", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": noise}])
    page.wait_for_selector("#error:has-text('too large to upload')")
    assert "max_upload_bytes" in page.inner_text("#error")
    page.close()


def test_keyboard_only_flow(ctx, page_server):
    base, bundle, root, manifest = page_server
    import pandas as pd

    ids = pd.read_parquet(bundle / "ids.parquet")
    page, _ = open_page(ctx, base)
    # Playwright turns on file-chooser interception without waiting for it: register a listener well before the
    # key press, or the press can win the race and the browser's own (headless, empty) dialog opens instead
    page.on("filechooser", lambda chooser: None)
    page.wait_for_selector("#examples button")
    assert _tab_to(page, "choose")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(root / ids["path"][3]))
    assert results(page, 10)[0]["id"] == 3
    page.keyboard.press("Tab")  # the choose button → k
    assert page.evaluate("document.activeElement.id") == "k"
    page.keyboard.press("Control+A")
    page.keyboard.type("6")
    page.keyboard.press("Enter")
    results(page, 6)
    # an example (a gallery thumbnail) by keyboard: its own class comes first
    assert _tab_to(page, None, selector="#examples button")
    label = page.evaluate("document.activeElement.getAttribute('aria-label')")
    example_id = int(label.split("gallery image ")[1].split(" ")[0])
    page.keyboard.press("Enter")
    page.wait_for_selector(f"#query-name:has-text('gallery #{example_id}')")
    first = results(page, 6)[0]
    assert first["label"] == int(ids["label"][example_id])
    # the focus ring is visible (outline on :focus-visible)
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.close()


def _tab_to(page, element_id, selector=None, limit=25):
    for _ in range(limit):
        page.keyboard.press("Tab")
        if selector:
            if page.evaluate(f"document.activeElement.matches({selector!r})"):
                return True
        elif page.evaluate("document.activeElement.id") == element_id:
            return True
    return False


def test_drop_and_paste(ctx, page_server):
    base, bundle, root, manifest = page_server
    import pandas as pd

    ids = pd.read_parquet(bundle / "ids.parquet")
    page, _ = open_page(ctx, base)
    data = list((root / ids["path"][7]).read_bytes())
    send = """([data, kind]) => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(data)], 'q.png', {type: 'image/png'}));
        if (kind === 'drop') document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
        else document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
    }"""
    page.evaluate(send, [data, "drop"])
    assert results(page, 10)[0]["id"] == 7
    data = list((root / ids["path"][30]).read_bytes())
    page.evaluate(send, [data, "paste"])
    expect(page.locator("#grid li").first).to_have_attribute("data-id", "30")
    page.close()


def test_without_thumbnails_the_page_shows_ids(ctx, page_server_without_thumbnails):
    base, bundle, root, manifest = page_server_without_thumbnails
    page, _ = open_page(ctx, base)
    assert page.is_hidden("#examples-section")
    page.set_input_files("#file", str(root / manifest["path"][12]))
    hits = results(page, 10)
    assert page.eval_on_selector_all("#grid img", "els => els.length") == 0
    assert page.inner_text("#grid li .thumb") == f"#{hits[0]['id']}"
    page.close()


def test_api_docs_render_offline(ctx, page_server):
    """/docs (Swagger UI) renders the OpenAPI description with only the server's own assets."""
    base, *_ = page_server
    for path, ready in (("/docs", ".swagger-ui .opblock-summary-path"),):
        page = ctx.new_page()
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "blob:", "data:")) else None)
        page.goto(base + path)
        page.wait_for_selector(ready)
        assert "/v1/search" in page.inner_text("body"), path
        assert not outside, f"{path} requested other hosts: {outside}"
        page.close()


def test_matches_are_marked_and_no_match_is_said(ctx, thresholds_server, page_server):
    """A bundle with thresholds: the page offers its operating points, marks the neighbours that match and says
    how many; at a point no neighbour reaches, "No match in the gallery". An old bundle: neither."""
    base, bundle, root, manifest = thresholds_server
    query = root / manifest[manifest["split"] == "train"]["path"].iloc[1]  # not in the gallery
    page, outside = open_page(ctx, base)
    expect(page.locator("#fmr-row")).to_be_visible()
    assert page.eval_on_selector_all("#fmr option", "els => els.map(e => [e.value, e.selected])") == [
        ["0.01", True], ["0.001", False]]
    page.set_input_files("#file", str(query))
    results(page, 10)
    flags = page.eval_on_selector_all("#grid li", "els => els.map(e => e.dataset.match)")
    matched = flags.count("true")
    assert 0 < matched < 10 and set(flags) == {"true", "false"}, flags
    expect(page.locator("#verdict")).to_have_text(
        f"{matched} of 10 neighbours match (similarity ≥ 0.970 at a false-match rate of 1%).")
    assert page.eval_on_selector_all("#grid li.match .badge", "els => els.length") == matched
    page.select_option("#fmr", "0.001")  # a change re-runs the same query at the stricter point
    expect(page.locator("#verdict")).to_have_text(
        "No match in the gallery (no neighbour has similarity ≥ 0.990 at a false-match rate of 0.1%).")
    assert page.eval_on_selector_all("#grid li", "els => els.map(e => e.dataset.match)") == ["false"] * 10
    assert not outside, f"the page requested other hosts: {outside}"
    page.close()

    base, _, root, manifest = page_server
    page, _ = open_page(ctx, base)
    page.set_input_files("#file", str(query))
    results(page, 10)
    assert page.is_hidden("#fmr-row") and page.is_hidden("#verdict")
    assert page.eval_on_selector_all("#grid li.match", "els => els.length") == 0
    page.close()
