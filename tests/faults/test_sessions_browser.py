"""Two people at once, in two browser contexts (two cookie jars, two sessions): one switches
project, the other keeps seeing theirs; a reload reopens each one's own project. Screenshots
of both pages go to ``artifacts/screenshots/sessions-*.png``. Marker ``browser``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.project import Project

from .conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "artifacts" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    import urllib.request

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the studio did not answer on {url} in {timeout:.0f} s")


@pytest.fixture
def studio(tmp_path):
    """``rcdm-studio --project alpha`` with ``alpha`` and ``beta`` in the projects folder."""
    projects = tmp_path / "projects"
    for name in ("alpha", "beta"):
        Project(projects / name).close()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_PROJECTS=str(projects),
               RCDM_STUDIO_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    log = open(tmp_path / "studio.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", "alpha",
                             "--no-browser", "--port", str(port)], cwd=tmp_path, env=env,
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
        print((tmp_path / "studio.log").read_text()[-2000:])


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"sessions-{name}.png"), full_page=False)


def test_two_browser_sessions_keep_their_own_project(studio):
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        expect.set_options(timeout=30_000)
        try:
            a = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            b = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
            for page in (a, b):
                page.goto(studio)
                expect(page.locator("#brand")).to_contain_text("alpha")
            # a opens beta from the Projects tab
            a.get_by_role("tab", name="Projects").click()
            a.locator("#open-project-path input, #open-project-path textarea").first.fill("beta")
            a.locator("#open-project").click()
            expect(a.locator("#projects-status")).to_contain_text("opened beta")
            expect(a.locator("#brand")).to_contain_text("beta")
            expect(a.locator("#current-project")).to_contain_text("Open project: beta")
            # b, polling its jobs panel meanwhile, still shows alpha
            time.sleep(4)  # two jobs-panel ticks
            expect(b.locator("#brand")).to_contain_text("alpha")
            b.get_by_role("tab", name="Projects").click()
            expect(b.locator("#current-project")).to_contain_text("Open project: alpha")
            _shot(a, "a-switched-to-beta")
            _shot(b, "b-still-on-alpha")
            # a reload reopens each one's own project (a: from the browser's storage)
            a.reload()
            b.reload()
            expect(a.locator("#brand")).to_contain_text("beta")
            expect(b.locator("#brand")).to_contain_text("alpha")
            _shot(a, "a-after-reload")
        finally:
            browser.close()
