"""The Curate tab's "Browse by score" in a real browser: pick a score and an order, browse,
and the gallery's captions come in that order; a click opens the sample's provenance; "Drop
this page" of the kept samples moves the counts.

Debian's chromium through Playwright (marker ``browser``); skipped when either is missing.
The screenshot goes to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_curate_stage import curated_project  # noqa: F401 - the shared fixture
from test_map_browser import curate_page
from test_studio_browser import CHROMIUM, SHOTS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
]
playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


def _captions(page) -> list[str]:
    return [t.strip() for t in page.locator("#browse-gallery .thumbnail-item").all_inner_texts()]


def test_browse_by_score_orders_the_gallery(curated_project, tmp_path):  # noqa: F811
    project, _, _ = curated_project
    project_path = project.path
    n_samples = len(project.samples("gen-test"))
    project.close()
    with curate_page(project_path, tmp_path, n_samples) as page:
        page.locator("#browse-panel").get_by_text("Browse by score").first.click()
        page.locator("#browse-score input").click()
        page.get_by_role("option", name=re.compile("uniqueness")).click()
        status = page.locator("#browse-status")
        expect(status).to_contain_text("by uniqueness (nearest other sample), "
                                       "ascending")
        page.locator("#browse-order").get_by_text("descending").click()
        expect(status).to_contain_text("descending: page 1 of 1")
        expect(page.locator("#browse-gallery .thumbnail-item")).to_have_count(
            n_samples)
        values = [float(c.split(" · ")[0]) for c in _captions(page)]
        assert len(values) == n_samples and values == sorted(values, reverse=True)
        # a click: the sample's provenance, as in the other galleries
        page.locator("#browse-gallery .thumbnail-item").first.click()
        expect(page.locator("#provenance-text")).to_contain_text("sample gen-test_")
        page.keyboard.press("Escape")
        # the kept samples only, then drop the page: none is kept any more
        page.locator("#browse-which").get_by_text("kept (band + hand)").click()
        expect(status).to_contain_text("18 samples (kept)")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#browse-panel").scroll_into_view_if_needed()
        box = page.locator("#browse-panel").bounding_box()
        page.screenshot(path=str(SHOTS / "browse-by-score.png"), clip=box)
        page.locator("#browse-drop").click()
        expect(page.locator("#hand-status")).to_contain_text(
            "18 image(s) dropped by hand")
        expect(status).to_contain_text("0 samples (kept)")
        expect(page.locator("#band-summary")).to_contain_text("by hand")
