"""Responsiveness of the studio: cold start, a gallery page at scale, a band change.

Measures, on this machine:

- cold start: ``python -m studio.cli --project P --no-browser`` from process start to the
  first HTTP 200 (the issue's goal: under 10 s);
- gallery page: server time of one Data-tab page (60 thumbnails) of a dataset of ``--images``
  rows (default 20,000), worst of pages 1 / middle / last;
- band change: a ``/band`` call of the running studio over HTTP (gradio_client round trip:
  queue + handler + JSON) on a tiny real pipeline (import, encode, 3 training steps,
  generate, re-encode), median of ``--repeats``, beside a trivial call over HTTP (the
  round trip's floor: queue, SSE, JSON).

Prints a table, then one JSON line. ratio = 10 s / cold start (>= 1 meets the goal).

Usage: python benchmarks/studio_latency.py [--images 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no answer on {url} in {timeout:.0f} s")


def cold_start(tmp: Path) -> float:
    """Seconds from process start to HTTP 200 of a studio on a new project."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_HOME=str(tmp / "home"),
               RCDM_STUDIO_PROJECTS=str(tmp / "projects"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project",
                             str(tmp / "cold"), "--no-browser", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def gallery_page(tmp: Path, n: int, classes: int = 100) -> float:
    """Worst server time (s) of a Data-tab page over pages first / middle / last."""
    import pandas as pd

    from engine.project import Dataset
    from studio.context import StudioContext
    from studio.tabs import data_tab

    ctx = StudioContext(tmp / "gallery")
    try:
        rows = pd.DataFrame({
            "id": [f"i{i}" for i in range(n)], "dataset_id": "big", "idx": np.arange(n),
            "path": [f"d/{i}.png" for i in range(n)], "thumb": [f"t/{i}.png" for i in range(n)],
            "label": np.arange(n) % classes, "class_name": [f"c{i % classes}" for i in range(n)],
            "split": "train", "width": 64, "height": 64, "source_path": ""})
        ctx.project.add_dataset(Dataset(id="big", name="big", num_classes=classes, num_images=n,
                                        num_train=n, num_test=0, classes_json="[]",
                                        skipped_json="[]", config_json="{}"), rows)
        pages = data_tab.image_page(ctx, "big", None, "all", 1)[3]
        worst = 0.0
        for page in (1, pages // 2, pages):
            t0 = time.perf_counter()
            data_tab.image_page(ctx, "big", None, "all", page)
            worst = max(worst, time.perf_counter() - t0)
        return worst
    finally:
        ctx.close()


def _tiny_folder(root: Path, classes: int = 3, per_class: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 40, size=(12, 12, 3), dtype=np.uint8)
            img[c * 3:c * 3 + 4, c * 2:c * 2 + 4, c] = 230
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def isolated_env(tmp: Path) -> None:
    """Offline, no analytics, and the recent list / projects folder inside ``tmp``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["RCDM_STUDIO_HOME"] = str(tmp / "home")
    os.environ["RCDM_STUDIO_PROJECTS"] = str(tmp / "projects")


def tiny_trained_project(tmp: Path, name: str) -> tuple[Path, str]:
    """``tmp/name``: a tiny imported folder, its PCA encoding and an RCDM trained 3 steps;
    returns (project path, model id)."""
    from engine.config import EncodeConfig, ImportConfig, TrainConfig
    from engine.jobs import JobManager
    from engine.project import Dataset, Project
    from engine.stages import encode_stage, import_stage, train_stage

    path = tmp / name
    with Project(path) as p:
        jobs = JobManager(p)
        ds = p.get(Dataset, jobs.run_inline(import_stage.prepare(
            p, _tiny_folder(tmp / f"{name}-images"), "tiny",
            ImportConfig(test_fraction=0.25))).result_id)
        jobs.run_inline(encode_stage.prepare(p, EncodeConfig(encoder="pca", dim=8, image_size=16),
                                       dataset_ref=ds.id))
        cfg = TrainConfig(steps=3, batch_size=8, block_channels=(8, 16), cross_attention_dim=16,
                          attention_head_dim=8, warmup_steps=1)
        model = jobs.run_inline(train_stage.prepare(p, cfg, ds.id, encoder="pca")).result_id
    return path, model


def band_change(tmp: Path, repeats: int) -> tuple[float, float]:
    """Median seconds of a ``/band`` call over HTTP on a tiny real pipeline, and of a
    trivial call (``/open_project`` of a missing project: the round trip's floor)."""
    from gradio_client import Client

    from engine.config import EncodeConfig, GenerateConfig
    from engine.jobs import JobManager
    from engine.project import Project
    from engine.stages import encode_stage, generate_stage
    from studio.app import close, launch

    path, model = tiny_trained_project(tmp, "band")
    with Project(path) as p:
        jobs = JobManager(p)
        gen = jobs.run_inline(generate_stage.prepare(p, GenerateConfig(variations=2, steps=2),
                                               model)).result_id
        jobs.run_inline(encode_stage.prepare(p, EncodeConfig(encoder="pca", dim=8, image_size=16),
                                       generation_ref=gen))
    port = _free_port()
    blocks = launch(path, port=port, open_browser=False, prevent_thread_lock=True)
    try:
        # download_files=False: the server-side round trip, not the client fetching the
        # 32 gallery images of every answer (the browser loads those lazily, cached)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
        times = []
        for i in range(repeats + 1):
            low = 0.1 + 0.05 * (i % 5)
            t0 = time.perf_counter()
            client.predict(gen, low, low + 0.5, "real", "cosine", api_name="/band")
            times.append(time.perf_counter() - t0)
        floor = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            client.predict("missing", api_name="/open_project")
            floor.append(time.perf_counter() - t0)
        # the first band call fills the cache
        return statistics.median(times[1:]), statistics.median(floor)
    finally:
        close(blocks)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        isolated_env(tmp)
        start = cold_start(tmp)
        page = gallery_page(tmp, args.images)
        band, floor = band_change(tmp, args.repeats)
    rows = [("cold start to HTTP 200", f"{start:.2f} s", "goal < 10 s"),
            (f"gallery page ({args.images:,} images)", f"{1000 * page:.1f} ms", "server time"),
            ("band change (/band over HTTP)", f"{1000 * band:.1f} ms", "median round trip"),
            ("trivial call over HTTP", f"{1000 * floor:.1f} ms", "round-trip floor")]
    for name, value, note in rows:
        print(f"{name:<34} {value:>10}  {note}")
    print(json.dumps({"claim": "rcdm-studio answers HTTP within 10 s of a cold start",
                      "ratio": round(10.0 / start, 3), "goal": 1.0, "met": start < 10.0,
                      "benchmark": "studio_latency", "cold_start_s": round(start, 3),
                      "gallery_page_ms": round(1000 * page, 2), "images": args.images,
                      "band_change_ms": round(1000 * band, 2),
                      "http_floor_ms": round(1000 * floor, 2), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
