"""The Generate tab in chromium: an uploaded image (not in the project) -> its variations, and
an edit's λ strip, one row per source with λ captions. Screenshots go to
``artifacts/screenshots/generate-*.png``. Marker ``browser``."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"
JOB_TIMEOUT = 300_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


@pytest.fixture
def studio(tmp_path):
    """The studio on a tiny project with a (random-weight) 8x8 model of three classes."""
    from conftest import tiny_generation_project

    path, _ = tiny_generation_project(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_HOME=str(tmp_path / "home"),
               OMP_NUM_THREADS="1")
    log = open(tmp_path / "studio.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", str(path),
                             "--no-browser", "--port", str(port)], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        end = time.time() + 90
        while True:
            assert proc.poll() is None, "the studio exited"
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert time.time() < end, "the studio did not answer in 90 s"
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print((tmp_path / "studio.log").read_text()[-2000:])


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"generate-{name}.png"), full_page=True)


def test_upload_variations_and_a_lambda_strip(studio, tmp_path):
    upload = tmp_path / "outside.png"
    Image.fromarray(np.full((12, 12, 3), 70, np.uint8)).save(upload)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        expect.set_options(timeout=45_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(studio)
            # the page has loaded (its first tab chosen) before the click
            expect(page.locator("#steps")).to_contain_text("Next: pick real images")
            expect(page.get_by_role("tab", name="Data")).to_have_attribute("aria-selected",
                                                                           "true")
            page.get_by_role("tab", name="Generate").click()
            expect(page.locator("#gen-model input")).to_have_value(re.compile("tiny-rcdm"))
            expect(page.locator("#gen-picker .thumbnail-item").first).to_be_visible()
            # 1. an image that is not in the project -> two variations of it
            page.locator("#gen-upload-panel").get_by_text("upload images").first.click()
            page.locator("#gen-uploads input[type=file]").set_input_files(str(upload))
            expect(page.locator("#gen-uploads-info")).to_contain_text("1 uploaded image(s)")
            page.locator("#gen-steps input").fill("2")
            page.locator("#gen-button").click()
            expect(page.locator("#gen-status")).to_contain_text("Generate 2 images")
            expect(page.locator("#gen-info")).to_contain_text("2 images", timeout=JOB_TIMEOUT)
            page.locator("#gen-samples .thumbnail-item").first.click()
            expect(page.locator("#sample-provenance")).to_contain_text(
                "variation of uploaded file outside.png")
            _shot(page, "upload")
            # 2. an edit: one picked image, a λ strip of 4 from class_0 towards class_2
            page.locator("#gen-uploads button[aria-label='Clear']").first.click()
            expect(page.locator("#gen-uploads-info")).not_to_contain_text("uploaded")
            page.locator("#gen-picker .thumbnail-item").first.click()
            expect(page.locator("#gen-picked-info")).to_contain_text("1 image(s) selected")
            page.locator("#gen-mode input").click()
            page.get_by_role("option", name=re.compile("λ strip")).click()
            expect(page.locator("#gen-edit-from input")).to_have_value("class_0")
            expect(page.locator("#gen-edit-to input")).to_have_value("class_2")
            strip = page.locator("#gen-edit-strip textarea, #gen-edit-strip input").first
            strip.fill("0, 0.5, 1, 1.5")
            page.locator("#gen-variations input").fill("1")  # one seed per λ
            page.locator("#gen-button").click()
            expect(page.locator("#gen-status")).to_contain_text(
                "Generate 4 images (edit class_0:class_2, λ = 0, 0.5, 1, 1.5)")
            expect(page.locator("#gen-info")).to_contain_text("one row per source",
                                                              timeout=JOB_TIMEOUT)
            captions = page.locator("#gen-samples .thumbnail-item")
            expect(captions).to_have_count(4)
            expect(page.locator("#gen-samples")).to_contain_text("λ 1.5")
            captions.nth(2).click()
            expect(page.locator("#sample-provenance")).to_contain_text(
                "λ = 1 from class class_0 towards class class_2")
            _shot(page, "strip")
        finally:
            browser.close()
