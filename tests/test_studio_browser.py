"""The studio in a real browser: from a fresh start, the whole pipeline by clicking only.

Projects tab -> "Open the demo project" (digits imported), Data gallery and details, encode,
train (30 steps), pick 4 real images and generate, provenance of a generated image, move
the band and save a selection, an evaluation, export + zip download, an evaluation's page
and two runs compared, a long training cancelled from the jobs panel (its process is
checked gone), Settings, and a reload that reopens the tab the user left. Opt-in tier
marker ``browser``; skipped when Debian's chromium or Playwright is missing. A screenshot
per step (1280x800, full page) and of every tab at 1920x1080 go to
``artifacts/screenshots/`` (repo-relative, git-ignored).
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
    """The studio as the user starts it: ``python -m studio.cli --project P --no-browser``
    on a fresh, empty project; the projects folder and the recent list are in the test's
    folder. Yields (url, projects folder)."""
    root = tmp_path_factory.mktemp("browser")
    project = root / "start"
    projects = root / "projects"
    port = _free_port()
    log = open(root / "studio.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_PROJECTS=str(projects),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",  # workers on a shared 2-core CPU
               RCDM_STUDIO_HOME=str(root / "home"))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", str(project),
                             "--no-browser", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, proc)
        print(f"cold start to HTTP 200: {time.time() - t0:.1f} s")
        yield url, projects
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for p in (project, projects / "demo"):
            if Path(f"{p}.duckdb").exists():
                _stop_workers(p)
        print((root / "studio.log").read_text()[-3000:])


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
        expect.set_options(timeout=45_000)  # the UI answers in ~1 s idle, 10-20 s on a loaded 2-core CPU
        pg.goto(studio[0])
        yield pg
        context.close()
        browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True, timeout=120_000)


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def _worker_pids(folder: Path) -> list[int]:
    """Processes whose command line names ``folder`` (the job workers of a project)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "engine.worker" in cmd and str(folder) in cmd:
            pids.append(int(proc.name))
    return pids


def test_whole_pipeline_by_clicking(page, studio, tmp_path):
    t0 = time.time()
    projects = studio[1]
    # 0. a fresh start: the picker is shown, the header suggests the first step
    expect(page.get_by_role("tab", name="Projects")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#steps")).to_contain_text("Next: import the demo digits")
    expect(page.locator("#brand")).to_contain_text("start")
    shot(page, "00-fresh-start")

    # 1. Projects: the demo project is one click away (created, the digits imported by a
    #    job in the jobs panel)
    page.locator("#open-demo-project").click()
    expect(page.locator("#projects-status")).to_contain_text(
        "opened demo, importing the digits", timeout=90_000)
    expect(page.locator("#brand")).to_contain_text("demo")
    expect(page.locator("#current-project")).to_contain_text("Open project: demo")
    expect(page.locator("#steps")).to_contain_text("Next: encode the dataset",
                                                   timeout=JOB_TIMEOUT)
    assert (projects / "demo.duckdb").is_file()
    shot(page, "01-projects-demo-opened")

    # 2. Data: the gallery pages through the digits; a click shows the image's details
    tab(page, "Data")
    expect(page.locator("#dataset-summary")).to_contain_text("1,438 train")
    page.locator("#data-gallery .thumbnail-item").nth(3).click()
    expect(page.locator("#image-detail img")).to_be_visible()
    shot(page, "02-data")

    # 3. Train: encode with PCA, then train a tiny RCDM (30 steps)
    tab(page, "Train")
    page.locator("#encode-pca").click()
    expect(page.locator("#steps")).to_contain_text("Next: train an RCDM", timeout=JOB_TIMEOUT)
    expect(page.locator("#train-encoder input")).to_have_value(re.compile("PCA"))
    set_number(page, "train-steps", 30)
    set_number(page, "train-batch", 16)
    # before the click: the run's time on this machine, measured from a few real steps
    expect(page.locator("#train-estimate")).to_contain_text("Estimated time on this machine",
                                                            timeout=90_000)
    expect(page.locator("#train-estimate")).to_contain_text("30 steps")
    shot(page, "03a-train-estimate")
    page.locator("#train-button").click()
    expect(page.locator("#train-status")).to_contain_text("Train rcdm-pca")
    expect(page.locator("#jobs-table")).to_contain_text("Train rcdm-pca")
    expect(page.locator("#model-info")).to_contain_text("trained", timeout=JOB_TIMEOUT)
    expect(page.locator("#model-info")).to_contain_text("30 / 30 steps")
    expect(page.locator("#train-preview img")).to_be_visible()
    page.locator("#train-previews-panel").get_by_text("Previews over training").first.click()
    expect(page.locator("#train-previews .thumbnail-item").first).to_be_visible()
    expect(page.locator("#loss-plot .js-plotly-plot")).to_be_visible()
    shot(page, "03-train-done")

    # 4. Generate: 4 real images picked by clicking, 2 variations each, 5 steps; a click on
    #    a generated image shows where it comes from
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
    page.locator("#gen-samples .thumbnail-item").nth(1).click()
    expect(page.locator("#sample-provenance")).to_contain_text("variation of real image")
    expect(page.locator("#sample-provenance")).to_contain_text("rcdm-pca")
    shot(page, "04-generate-provenance")

    # 5. Curate: the band chart, move the band with the presets, save a selection
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
    # the edge galleries follow the band: with the lower half dropped, the "dropped ·
    # nearest" gallery holds 4 samples; with everything kept it is empty
    expect(page.locator("#edge-nearest-dropped .thumbnail-item")).to_have_count(4)
    page.locator("#preset-all").click()
    expect(page.locator("#band-summary")).to_contain_text("Keeping 8 of 8")
    expect(page.locator("#edge-nearest-dropped .thumbnail-item")).to_have_count(0)
    page.locator("#preset-middle").click()
    expect(page.locator("#band-summary")).to_contain_text("band 0.25 – 0.75")
    expect(page.locator("#band-summary")).to_contain_text("Keeping 4 of 8")
    expect(page.locator("#band-counts")).to_contain_text("drop near")
    # the 2-D map and the metrics of the kept samples
    page.locator("#map-panel").get_by_text("2-D map").first.click()
    page.locator("#map-button").click()
    # the layout is computed once by a map job, then drawn with WebGL (test_map_browser.py)
    expect(page.locator("#band-map [data-points]")).to_have_attribute(
        "data-points", re.compile(r"\d+"), timeout=JOB_TIMEOUT)
    page.locator("#metrics-panel").get_by_text("Metrics of the kept samples").first.click()
    page.locator("#metrics-button").click()
    expect(page.locator("#metrics-text")).to_contain_text("kept samples vs the real training",
                                                          timeout=60_000)
    expect(page.locator("#metrics-table")).to_contain_text("precision")
    shot(page, "05a-curate-map-metrics")
    page.locator("#selection-name input, #selection-name textarea").first.fill("browser-middle")
    page.locator("#save-selection").click()
    expect(page.locator("#curate-status")).to_contain_text("saved selection browser-middle")
    expect(page.locator("#selections-table")).to_contain_text("browser-middle")
    shot(page, "05-curate-saved")
    # by hand: click a kept sample, find more like it, drop it, hand it back to the band
    page.locator("#edge-farthest-kept .thumbnail-item").first.click()
    expect(page.locator("#provenance-text")).to_contain_text("sample")
    page.locator("#more-like-this").click()
    expect(page.locator("#hand-status")).to_contain_text("nearest images of sample")
    expect(page.locator("#neighbours-gallery .thumbnail-item").first).to_be_visible()
    page.locator("#hand-drop").click()
    expect(page.locator("#hand-status")).to_contain_text("1 image(s) dropped by hand")
    expect(page.locator("#band-summary")).to_contain_text("by hand: +0 / −1")
    shot(page, "05b-curate-by-hand")
    page.locator("#hand-clear").click()
    expect(page.locator("#hand-status")).to_contain_text("handed back to the band")
    # more like this goes on from a real image of the neighbours gallery: its copies
    page.locator("#neighbours-gallery .thumbnail-item",
                 has_text=re.compile(r"^\s*real")).first.click()
    expect(page.locator("#provenance-text")).to_contain_text("real training image")
    page.locator("#more-like-this").click()
    expect(page.locator("#hand-status")).to_contain_text("nearest images of real image")
    expect(page.locator("#hand-status")).to_contain_text("near-copies of this training image")
    page.locator("#neighbours-panel").screenshot(path=str(SHOTS / "05c-more-like-real.png"))

    # 6. Evaluate: real + the selection, 2 epochs; the results table shows top-1
    tab(page, "Evaluate")
    expect(page.locator("#eval-selection input")).to_have_value(re.compile("browser-middle"))
    set_number(page, "eval-epochs", 2)
    page.locator("#eval-button").click()
    expect(page.locator("#eval-status")).to_contain_text("Evaluate")
    expect(page.locator("#eval-table")).to_contain_text("done", timeout=JOB_TIMEOUT)
    expect(page.locator("#eval-plot .js-plotly-plot")).to_be_visible()
    shot(page, "06-evaluate-done")

    # 7. Export the selection and download the zip
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
    shot(page, "07-export-downloaded")

    # 7b. Experiments: the paper's filtering experiment on the 2x generation, 1 seed, 1 epoch
    tab(page, "Evaluate")
    page.locator("#exp-kind").get_by_text("Filtering").click()
    page.locator("#exp-generations input").click()
    page.get_by_role("option", name=re.compile("rcdm-pca-x2")).click()
    set_number(page, "exp-seeds", 1)
    set_number(page, "exp-epochs", 1)
    page.locator("#exp-button").click()
    expect(page.locator("#exp-status")).to_contain_text("2 evaluations queued")
    expect(page.locator("#exp-list")).to_contain_text("done", timeout=JOB_TIMEOUT)
    expect(page.locator("#exp-table")).to_contain_text("middle band of 2x")
    expect(page.locator("#exp-table")).to_contain_text("unfiltered 1x")
    expect(page.locator("#exp-plot .js-plotly-plot")).to_be_visible()
    shot(page, "07b-experiment-filtering")

    # 7b'. An evaluation's page: a click on a row of the evaluations table opens it (top-1
    #      with its split, per-class accuracy, confusion matrix, curves, config); two runs
    #      ticked are compared (curves overlaid, configs side by side, what differs first)
    page.locator("#eval-table").get_by_text("real+synthetic", exact=True).first.click()
    expect(page.locator("#eval-summary")).to_contain_text("real+synthetic")
    expect(page.locator("#eval-summary")).to_contain_text("on the test split")
    for elem in ("eval-per-class", "eval-confusion", "eval-curves"):
        expect(page.locator(f"#{elem} .js-plotly-plot")).to_be_visible()
    expect(page.locator("#eval-config")).to_contain_text("resnet_tiny")  # the arch row
    for name in (r"^real\+synthetic · ", "unfiltered"):
        page.locator("#eval-compare input").click()
        page.get_by_role("option", name=re.compile(name)).first.click()
    page.keyboard.press("Escape")
    expect(page.locator("#eval-compare-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#eval-compare-table")).to_contain_text("≠")
    expect(page.locator("#eval-compare-table")).to_contain_text("selection")
    page.wait_for_timeout(1000)  # the charts drawn
    shot(page, "07d-evaluation-page-compare")

    # 7c. Generate on the path between two selected images; the new generation shows by
    #     itself, and a click on an image says where on the path it lies
    tab(page, "Generate")
    page.get_by_role("button", name="Clear selection").click()
    expect(page.locator("#gen-picked-info")).to_contain_text("0 images selected")
    thumbs = page.locator("#gen-picker .thumbnail-item")
    for i in (0, 5):
        thumbs.nth(i).click()
    expect(page.locator("#gen-picked-info")).to_contain_text("2 image(s) selected")
    page.locator("#gen-mode input").click()
    page.get_by_role("option", name="interpolation between two selected images").click()
    expect(page.locator("#gen-mode-hint")).to_contain_text("exactly two")
    expect(page.locator("#gen-points")).to_be_visible()
    set_number(page, "gen-points", 3)
    set_number(page, "gen-variations", 1)
    page.locator("#gen-button").click()
    expect(page.locator("#gen-status")).to_contain_text("Generate 3 images")
    expect(page.locator("#gen-info")).to_contain_text("interpolation between two selected",
                                                      timeout=JOB_TIMEOUT)
    page.locator("#gen-samples .thumbnail-item").nth(1).click()
    expect(page.locator("#sample-provenance")).to_contain_text("interpolation at t = 0.500")
    shot(page, "07c-generate-interpolation")

    # 8. Jobs: a long training is cancelled from the panel and its process really stops
    tab(page, "Train")
    set_number(page, "train-steps", 100_000)
    page.locator("#train-button").click()
    expect(page.locator("#jobs-table")).to_contain_text("running", timeout=60_000)
    jobs_folder = projects / "demo.assets" / "jobs"
    deadline = time.time() + 60
    while not _worker_pids(jobs_folder) and time.time() < deadline:
        time.sleep(0.5)
    assert _worker_pids(jobs_folder), "the training worker did not start"
    # the panel follows the newest active job: it is the chosen one
    expect(page.locator("#job-choice input")).to_have_value(re.compile(r"\(running\)"))
    page.get_by_role("button", name="Cancel job").click(no_wait_after=True)  # no navigation
    expect(page.locator("#jobs-table")).to_contain_text("cancelled", timeout=60_000)
    deadline = time.time() + 30
    while _worker_pids(jobs_folder) and time.time() < deadline:
        time.sleep(0.5)
    assert not _worker_pids(jobs_folder), "the cancelled worker is still running"
    shot(page, "08-jobs-cancelled")

    # 9. Settings, then a reload: the studio reopens on the tab the user left, at 1920x1080
    tab(page, "Settings")
    expect(page.locator("#machine-info")).to_contain_text("CPU")
    shot(page, "09-settings")
    tab(page, "Curate")
    page.set_viewport_size({"width": 1920, "height": 1080})
    page.reload()
    expect(page.get_by_role("tab", name="Curate")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#band-plot .js-plotly-plot")).to_be_visible()
    expect(page.locator("#jobs-table")).to_contain_text("Export browser-middle")
    for name in ("Projects", "Data", "Train", "Generate", "Curate", "Evaluate", "Export",
                 "Settings"):
        tab(page, name)
        page.wait_for_timeout(1200)
        page.screenshot(path=str(SHOTS / f"1920-{name.lower()}.png"))
    print(f"browser pipeline: {time.time() - t0:.0f} s")
