"""``pathsegmentor serve`` in a real headless browser (Debian's ``chromium`` driven by Playwright): the
page opens the file given first at once; a bundled tile is opened, a prompt is typed and its overlay appears
(the viewer's pixels change), a box prompt is drawn, the GeoJSON export is a FeatureCollection; a generated
pyramidal slide opens and is segmented whole as a job; a corrupt file shows its error in the page. With ``PATHSEG_SCREENSHOT_DIR``
set, the page with the tile's overlay is saved there as ``serve.jpg`` (the README's picture)."""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = os.environ.get("PATHSEG_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TILE = "monuseg_TCGA-18-5592-01Z-00-DX1.png"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, slide):
    pytest.importorskip("uvicorn")
    pytest.importorskip("playwright", reason="pip install playwright (in the 'test' extra)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (as .ci/run does), "
                    f"or set PATHSEG_CHROMIUM to a Chromium binary")
    import uvicorn

    from pathsegmentor import from_pretrained
    from pathsegmentor.resources import SAMPLES_DIR
    from pathsegmentor.serve.app import create_app
    from pathsegmentor.serve.cli import free_port
    from pathsegmentor.serve.files import FileRegistry

    root = tmp_path_factory.mktemp("served")
    shutil.copy(slide, root / "case.tif")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    model = from_pretrained("pathsegmentor-tiny").eval()
    app = create_app(model, FileRegistry([SAMPLES_DIR / TILE], root=root), workdir=tmp_path_factory.mktemp("jobs"))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    t0 = time.time()
    while not srv.started and time.time() - t0 < 30:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
        pg.set_default_timeout(60_000)
        pg.goto(server)
        pg.wait_for_function("document.querySelectorAll('#file option').length >= 3")
        yield pg
        browser.close()


IDLE = "document.body.dataset.state === 'idle'"
LOADED = ("() => { const v = window.pathseg.viewer; const n = v.world.getItemCount(); if (!n) return false;"
          " for (let i = 0; i < n; i++) if (!v.world.getItemAt(i).getFullyLoaded()) return false; return true; }")


def _shot(page) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.locator("#viewer").screenshot())).convert("RGB")).astype(np.int16)


def _open(page, name: str) -> None:
    page.select_option("#file", name)
    page.click("#open")
    page.wait_for_function(IDLE)


def test_the_file_given_on_the_command_line_is_open_at_once(page):
    """``pathsegmentor serve FILE``: the page opens FILE on load, without a click (it used to say "no file open")."""
    page.wait_for_function(f"window.pathseg.image && window.pathseg.image.name === '{TILE}' && {IDLE}")
    assert page.locator("#file").input_value() == TILE
    assert "0.25 µm/px" in page.locator("#info").inner_text()
    assert page.locator("#error").is_hidden()


def test_tile_prompt_overlay_box_and_export(page):
    _open(page, TILE)
    assert page.locator("#error").is_hidden()
    assert "0.25 µm/px" in page.locator("#info").inner_text()
    page.wait_for_function(LOADED)
    page.wait_for_timeout(300)
    before = _shot(page)
    assert before.std() > 10  # the tile is drawn

    page.fill("#prompts", "nuclei, a red car")
    page.click("#segment-view")
    page.wait_for_function(f"window.pathseg.result && {IDLE}")
    page.wait_for_function("window.pathseg.layers.length > 0 && window.pathseg.layers.every(l => l.item)")
    page.wait_for_function(LOADED)
    page.wait_for_timeout(300)
    after = _shot(page)
    changed = (np.abs(after - before).sum(-1) > 30).mean()
    assert changed > 0.01, f"overlay changed only {changed:.4f} of the viewer's pixels"
    legend = page.locator("#legend").inner_text()
    assert "presence" in legend and "refused" in legend  # 'a red car' is refused with its reason
    if os.environ.get("PATHSEG_SCREENSHOT_DIR"):
        out = Path(os.environ["PATHSEG_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "serve.jpg"), type="jpeg", quality=80)

    with page.expect_download() as dl:
        page.click("#export-geojson")
    gj = json.loads(Path(dl.value.path()).read_text())
    assert gj["type"] == "FeatureCollection" and gj["features"]
    assert {f["properties"]["classification"]["name"] for f in gj["features"]} == {"nuclei"}

    first = page.evaluate("window.pathseg.result.id")
    page.fill("#prompts", "")
    page.click("#draw-box")
    box = page.locator("#viewer").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy - 40)
    page.mouse.down()
    page.mouse.move(cx, cy, steps=5)
    page.mouse.move(cx + 40, cy + 40, steps=5)
    page.mouse.up()
    page.wait_for_function(f"window.pathseg.result.id !== '{first}' && {IDLE}")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert page.evaluate("window.pathseg.result.prompts[0].prompt").startswith("<geometric")


def test_slide_opens_and_segments_as_a_job(page):
    _open(page, "case.tif")
    assert page.locator("#error").is_hidden(), page.locator("#error").inner_text()
    assert "2048×1536" in page.locator("#info").inner_text()
    page.wait_for_function(LOADED)
    page.wait_for_timeout(300)
    assert _shot(page).std() > 10
    page.fill("#prompts", "nuclei")
    page.click("#job-start")
    page.wait_for_function("/: (done|error|cancelled)/.test(document.querySelector('#job-status').textContent)",
                           timeout=90_000)
    assert "done" in page.locator("#job-status").inner_text(), page.locator("#error").inner_text()
    assert page.locator("#job-progress").get_attribute("value") in ("1", None) or \
        page.evaluate("document.querySelector('#job-progress').value") == 1
    page.wait_for_function("window.pathseg.jobLayers.length === 1 && window.pathseg.jobLayers[0].item")
    assert page.locator("#job-files a", has_text="case.geojson").count() == 1


def test_corrupt_file_shows_its_error(page):
    _open(page, "corrupt.png")
    err = page.locator("#error")
    assert err.is_visible()
    assert "Cannot open 'corrupt.png'" in err.inner_text()
    _open(page, TILE)  # the server keeps serving
    assert err.is_hidden()
