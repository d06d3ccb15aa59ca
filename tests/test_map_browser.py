"""The Curate tab's WebGL map in a real browser: "Draw map" computes the layout in a job and
draws it, a box selection lists its images, Drop turns them into hand decisions, and the
counts, a saved selection and its export change accordingly.

Debian's chromium through Playwright (marker ``browser``); skipped when either is missing.
Screenshots go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture
from test_studio_browser import CHROMIUM, ROOT, SHOTS, _free_port, _wait_http

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


def _studio(project_path: Path, root: Path) -> tuple[subprocess.Popen, str, object]:
    port = _free_port()
    log = open(root / "studio.log", "wb")
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_PROJECTS=str(root / "projects"),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", RCDM_STUDIO_HOME=str(root / "home"))
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", str(project_path),
                             "--no-browser", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    _wait_http(url, proc)
    return proc, url, log


@contextlib.contextmanager
def curate_page(project_path: Path, root: Path, n_samples: int):
    """The studio on ``project_path`` in chromium, on the Curate tab once its band is drawn;
    the browser and the studio are stopped afterwards."""
    proc, url, log = _studio(project_path, root)
    try:
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--no-first-run"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                expect.set_options(timeout=45_000)
                page.goto(url, wait_until="load")
                expect(page.locator("#current-project")).to_contain_text("proj")
                # the page has loaded (its first tab chosen) before the click
                expect(page.get_by_role("tab", name="Data")).to_have_attribute(
                    "aria-selected", "true")
                page.get_by_role("tab", name="Curate").click()
                expect(page.get_by_role("tab", name="Curate")).to_have_attribute(
                    "aria-selected", "true")
                expect(page.locator("#band-summary")).to_contain_text(
                    f"of {n_samples} generated images")
                yield page
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _shot(page, name: str) -> None:
    """A screenshot of the map panel (clipped from the page: the panel's images keep it from
    counting as "stable" for an element screenshot)."""
    page.locator("#map-panel").scroll_into_view_if_needed()
    box = page.locator("#map-panel").bounding_box()
    page.screenshot(path=str(SHOTS / f"{name}.png"), clip=box)


def test_box_select_drop_changes_counts_selection_and_export(curated_project,  # noqa: F811
                                                             tmp_path):
    from engine.config import ExportConfig
    from engine.jobs import JobManager
    from engine.project import HandOverride, MapLayout, Project, Selection
    from engine.stages import export_stage

    project, _, _ = curated_project
    project_path = project.path
    n_samples = len(project.samples("gen-test"))
    project.close()
    with curate_page(project_path, tmp_path, n_samples) as page:
        page.locator("#map-panel").get_by_text("2-D map").first.click()
        page.locator("#map-button").click()
        # no layout yet: a map job computes it, and the map appears when it is done
        drawn = page.locator("#band-map [data-points]")
        expect(drawn).to_have_attribute("data-points", re.compile(r"\d+"), timeout=90_000)
        points = int(drawn.get_attribute("data-points"))
        assert points == n_samples + 18  # every sample and real training image
        renderer = drawn.get_attribute("data-renderer")
        assert renderer in ("WebGL", "2-D canvas")
        expect(page.locator("#band-map .wm-info")).to_contain_text(f"{points} points")
        expect(page.locator("#band-map .wm-legend")).to_contain_text("kept by the band")
        # a box over the left half of the map
        page.locator("#band-map button[data-mode=box]").click()
        page.locator("#band-map .wm-stage").scroll_into_view_if_needed()
        box = page.locator("#band-map .wm-over").bounding_box()
        page.mouse.move(box["x"] + 5, box["y"] + 5)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.6,
                        steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] - 5,
                        steps=5)
        page.mouse.up()
        status = page.locator("#map-selection-status")
        expect(status).to_contain_text("points selected")
        text = status.inner_text()
        generated = int(re.search(r"selected: ([\d,]+) generated", text).group(1))
        assert 0 < generated < n_samples
        expect(page.locator("#map-selection-gallery .thumbnail-item")).to_have_count(
            min(generated, 48))
        SHOTS.mkdir(parents=True, exist_ok=True)
        _shot(page, "map-box-selection")
        page.locator("#map-drop").click()
        expect(page.locator("#hand-status")).to_contain_text(
            f"{generated} image(s) dropped by hand")
        expect(page.locator("#band-counts")).to_contain_text("- hand")
        expect(page.locator("#band-summary")).to_contain_text("by hand")
        # the map recolours: the dropped points are in the hand-dropped colour now
        page.locator("#selection-name input, #selection-name textarea").first.fill(
            "map-dropped")
        page.locator("#save-selection").click()
        expect(page.locator("#curate-status")).to_contain_text("saved selection map-dropped")
        expect(page.locator("#selections-table")).to_contain_text("map-dropped")
        _shot(page, "map-after-drop")
    with Project(project_path) as project:
        layout = project.list(MapLayout)[-1]
        assert layout.count == n_samples + 18 and layout.job_id
        hand = [r for r in project.list(HandOverride) if r.decided_via == "map lasso"]
        assert len(hand) == 1 and hand[0].decision == "drop" and hand[0].count == generated
        dropped = set(project.load_array(hand[0].members_path, mmap=False).tolist())
        sel = project.list(Selection, name="map-dropped")[0]
        members = set(project.selection_members(sel).tolist())
        assert members and not (members & dropped)
        JobManager(project).run_inline(export_stage.prepare(project, ExportConfig(), sel.id,
                                                            tmp_path / "out"))
        manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
        ids = project.samples("gen-test")["id"].to_numpy()
        assert len(manifest) == len(members)
        assert not set(manifest["sample_id"]) & {ids[i] for i in dropped}
