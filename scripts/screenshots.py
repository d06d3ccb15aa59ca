"""Screenshots of each tab of the studio on an existing project, for the README.

Usage: .venv/bin/python scripts/screenshots.py PROJECT OUT_DIR [--width 1280 --height 800]
Starts ``rcdm-studio --project PROJECT --no-browser`` on a free port, opens every tab in
Debian's chromium (Playwright), saves OUT_DIR/<tab>.png, stops the studio.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project")
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--suffix", default="")
    ap.add_argument("--full", action="store_true", help="whole page, not only the viewport")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", args.project,
                             "--no-browser", "--port", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(url)
            page.wait_for_timeout(4000)
            for tab in ("Projects", "Data", "Train", "Generate", "Curate", "Evaluate",
                        "Export", "Settings"):
                page.get_by_role("tab", name=tab).click()
                page.wait_for_timeout(3500)
                if tab == "Curate":  # open the 2-D map and the metrics of the kept samples
                    page.locator("#map-panel").get_by_text("2-D map").first.click()
                    page.locator("#map-button").click()
                    page.locator("#metrics-panel").get_by_text("Metrics of the kept").first.click()
                    page.locator("#metrics-button").click()
                    page.locator("#metrics-table").get_by_text("precision").first.wait_for(
                        timeout=120_000)
                    page.wait_for_timeout(2000)
                page.screenshot(path=str(out / f"{tab.lower()}{args.suffix}.png"),
                                full_page=args.full)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
