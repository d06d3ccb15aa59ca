"""The studio in a real browser: the whole pipeline on the demo digits, by clicking only.

Opt-in tier marker ``browser``; skipped when Debian's chromium or Playwright is missing.
Screenshots of every step go to ``artifacts/screenshots/`` (repo-relative, git-ignored).
Run: ``.venv/bin/pytest -m browser tests/test_studio_browser.py``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect

JOB_TIMEOUT = 300_000  # ms for one background job (train / evaluate) on a busy 2-core CPU


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    import urllib.request

    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the studio did not answer on {url} in {timeout:.0f} s")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """The studio as the user starts it: ``python -m engine.cli --project P --no-browser``."""
    project = tmp_path_factory.mktemp("browser") / "studio"
    port = _free_port()
    log = open(project.parent / "studio.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "--project", str(project),
                             "--no-browser", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        _stop_workers(project)
        print((project.parent / "studio.log").read_text()[-3000:])


def _stop_workers(project: Path) -> None:
    """Workers outlive the studio by design (it reconnects at its next start): stop ours."""
    import signal

    from engine.project import Job, Project

    with Project(project, create=False) as p:
        for job in p.list(Job):
            if job.status in ("running", "ingesting") and job.pid:
                try:
                    os.killpg(job.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@pytest.fixture(scope="module")
def page(studio):
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        context = browser.new_context(viewport={"width": 1280, "height": 800},
                                      accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        expect.set_options(timeout=20_000)  # the UI answers in ~1 s; CPU is shared
        pg.goto(studio)
        yield pg
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def test_whole_pipeline_by_clicking(page, tmp_path):
    t0 = time.time()
    # 0. an empty project: the header suggests the first step
    expect(page.locator("#steps")).to_contain_text("Next: import the demo digits")
    shot(page, "00-empty-project")

    # 1. Data: import the demo with one click; the gallery fills, a click shows details
    page.locator("#import-demo").click()
    expect(page.locator("#data-status")).to_contain_text("imported digits: 1,797 images",
                                                         timeout=60_000)
    expect(page.locator("#dataset-summary")).to_contain_text("1,438 train")
    page.locator("#data-gallery .thumbnail-item").nth(3).click()
    expect(page.locator("#image-detail img")).to_be_visible()
    shot(page, "01-data-imported")

    # 2. Train: encode with PCA, then train a tiny RCDM (60 steps)
    tab(page, "Train")
    page.locator("#encode-pca").click()
    expect(page.locator("#steps")).to_contain_text("Next: train an RCDM", timeout=JOB_TIMEOUT)
    expect(page.locator("#train-encoder input")).to_have_value(re.compile("PCA"))
    set_number(page, "train-steps", 60)
    set_number(page, "train-batch", 16)
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("Train rcdm-pca")
    expect(page.locator("#model-info")).to_contain_text("trained", timeout=JOB_TIMEOUT)
    expect(page.locator("#train-preview img")).to_be_visible()
    expect(page.locator("#loss-plot .js-plotly-plot")).to_be_visible()
    shot(page, "02-train-done")

    # 3. Generate: 4 real images picked by clicking, 2 variations each, 5 DDIM steps
    tab(page, "Generate")
    thumbs = page.locator("#gen-picker .thumbnail-item")
    expect(thumbs.first).to_be_visible()
    for i in range(4):
        thumbs.nth(i).click()
        expect(page.locator("#gen-picked-info")).to_contain_text(f"{i + 1} image(s) selected")
    set_number(page, "gen-steps", 5)
    page.locator("#gen-button").click()
    expect(page.locator("#gen-status")).to_contain_text("Generate 8 images")
    expect(page.locator("#gen-info")).to_contain_text("8 images", timeout=JOB_TIMEOUT)
    page.locator("#reencode-button").click()
    expect(page.locator("#gen-info")).to_contain_text("re-encoded ✓", timeout=JOB_TIMEOUT)
    shot(page, "03-generate-reencoded")

    # 4. Curate: the band chart, move the band with the presets, save a selection
    tab(page, "Curate")
    expect(page.locator("#band-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#band-summary")).to_contain_text("of 8 generated images")
    page.locator("#preset-all").click()
    expect(page.locator("#band-summary")).to_contain_text("Keeping 8 of 8")
    low = page.locator('#band-low input[type="number"]')
    low.fill("0.5")
    low.press("Enter")
    expect(page.locator("#band-summary")).to_contain_text("band 0.50 – 1.00")
    expect(page.locator("#band-summary")).to_contain_text("Keeping 4 of 8")
    page.locator("#preset-middle").click()
    expect(page.locator("#band-summary")).to_contain_text("band 0.25 – 0.75")
    expect(page.locator("#band-summary")).to_contain_text("Keeping 4 of 8")
    expect(page.locator("#band-counts")).to_contain_text("drop near")
    page.locator("#selection-name input, #selection-name textarea").first.fill("browser-middle")
    page.locator("#save-selection").click()
    expect(page.locator("#curate-status")).to_contain_text("saved selection browser-middle")
    expect(page.locator("#selections-table")).to_contain_text("browser-middle")
    shot(page, "04-curate-saved")

    # 5. Evaluate: real + the selection, 2 epochs; the results table shows top-1
    tab(page, "Evaluate")
    expect(page.locator("#eval-selection input")).to_have_value(re.compile("browser-middle"))
    set_number(page, "eval-epochs", 2)
    page.locator("#eval-button").click()
    expect(page.locator("#eval-status")).to_contain_text("Evaluate")
    expect(page.locator("#eval-table")).to_contain_text("done", timeout=JOB_TIMEOUT)
    expect(page.locator("#eval-plot .js-plotly-plot")).to_be_visible()
    shot(page, "05-evaluate-done")

    # 6. Export the selection and download the zip
    tab(page, "Export")
    expect(page.locator("#export-selection input")).to_have_value(re.compile("browser-middle"))
    page.locator("#export-button").click()
    expect(page.locator("#exports-table")).to_contain_text("browser-middle",
                                                           timeout=JOB_TIMEOUT)
    page.locator("#zip-button").click()
    expect(page.locator("#zip-status")).to_contain_text("ready")
    with page.expect_download() as info:
        page.locator("#download-button").click()
    target = tmp_path / "export.zip"
    info.value.save_as(target)
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    assert sum(n.endswith(".png") for n in names) == 4
    expect(page.locator("#steps")).to_contain_text("every step is done")
    shot(page, "06-export-downloaded")

    # 7. the same studio at 1920 x 1080, and the jobs panel after a reload
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.reload()
    tab(page, "Curate")
    expect(page.locator("#band-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#jobs-table")).to_contain_text("Export browser-middle")
    shot(page, "07-curate-1920x1080")
    print(f"browser pipeline: {time.time() - t0:.0f} s")
