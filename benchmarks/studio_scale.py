"""The studio with a project of ImageNet-100's shape open: 130,000 real + 500,000 generated.

Builds (once, in ``--dir`` or a temporary folder) a project of that shape without images to
train on: 100 classes x 1,300 real image rows (50 per class held out for test), a generation
of 4 samples per training image (1,250 x 100 x 4 = 500,000 rows; ``--scale`` shrinks both), a ``--dim``-d
encoding of each (seeded random float32 arrays, memory-mapped), a trained model row. Every
row's image file is one of 100 small PNGs (one per class): the database, the arrays and the
studio's reads are at full size, the disk holds only what the measurements read.

Measured on this machine, in one run:

- cold open: ``rcdm-studio --project P`` from process start to the first HTTP 200 (goal
  under 10 s);
- gallery page: server time of a Data-tab page (60 thumbnails, one DuckDB ``LIMIT`` read)
  and of a Generate-tab page of the generation, worst of first / middle / last page (goal
  under 100 ms);
- band change: ``/band`` over HTTP (gradio_client round trip: queue, handler, JSON), first
  call (distances computed and cached) and the median of ``--repeats`` later calls with other
  edges (goal under 300 ms), beside a trivial call (the round trip's floor); then the same
  two over Gradio's queue protocol spoken directly on one connection, as a browser does
  (``raw_calls``: reported, not part of the ratio).

Prints a table, then one JSON line: ratio = the smallest goal / measured of the three (>= 1:
every goal met).

Usage: python benchmarks/studio_scale.py [--scale 1.0] [--dim 384] [--repeats 7] [--dir D]
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

CLASSES = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _random_array(path: Path, n: int, dim: int, labels: np.ndarray, seed: int) -> None:
    """(n, dim) float32 class-clustered random rows written chunk by chunk (no n x dim copy
    in memory)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, 65_536):
        stop = min(n, start + 65_536)
        out[start:stop] = centres[labels[start:stop]] + rng.normal(
            scale=1.5, size=(stop - start, dim)).astype(np.float32)
    out.flush()
    del out


def build(path: Path, scale: float, dim: int) -> dict[str, str]:
    """The project (see the module's docstring); returns its ids."""
    import pandas as pd
    from PIL import Image

    from engine.project import Dataset, Encoding, Generation, Model, Project

    per_class = max(2, int(round(1300 * scale)))
    n_real = CLASSES * per_class
    with Project(path) as p:
        if p.list(Generation):
            ds, gen = p.list(Dataset)[0], p.list(Generation)[0]
            return {"dataset": ds.id, "generation": gen.id, "real": ds.num_images,
                    "generated": gen.count, "reused": True}
        files = p.assets / "fab"
        files.mkdir(parents=True, exist_ok=True)
        for c in range(CLASSES):
            img = np.full((32, 32, 3), 20, np.uint8)
            img[4 + c % 20:12 + c % 20, 4 + c // 10:12 + c // 10] = (200, 60 + c, 255 - c)
            Image.fromarray(img).save(files / f"c{c:03d}.png")
        labels = np.repeat(np.arange(CLASSES), per_class)
        within = np.tile(np.arange(per_class), CLASSES)
        split = np.where(within < max(1, int(round(50 * scale))), "test", "train")
        ds_id = "ds_big"
        images = pd.DataFrame({
            "id": [f"{ds_id}_{i:07d}" for i in range(n_real)], "dataset_id": ds_id,
            "idx": np.arange(n_real), "path": [f"fab/c{c:03d}.png" for c in labels],
            "thumb": [f"fab/c{c:03d}.png" for c in labels], "label": labels,
            "class_name": [f"class_{c:03d}" for c in labels], "split": split,
            "width": 32, "height": 32, "source_path": ""})
        classes = [f"class_{c:03d}" for c in range(CLASSES)]
        p.add_dataset(Dataset(id=ds_id, name="imagenet100-shaped", num_classes=CLASSES,
                              num_images=n_real, num_train=int((split == "train").sum()),
                              num_test=int((split == "test").sum()),
                              classes_json=json.dumps(classes), skipped_json="[]",
                              config_json="{}"), images)
        (p.assets / "encodings").mkdir(exist_ok=True)
        _random_array(p.assets / "encodings" / "real.npy", n_real, dim, labels, 0)
        enc = p.add(Encoding(id="enc_real", dataset_id=ds_id, encoder="dinov2", offline=False,
                             dim=dim, count=n_real, array_path="encodings/real.npy"))
        p.add(Model(id="mdl_big", name="rcdm-dinov2", dataset_id=ds_id, encoding_id=enc.id,
                    encoder="dinov2", status="trained", steps_done=1))
        train = np.flatnonzero(split == "train")
        src = np.repeat(train, 4)  # 4 samples per training image
        n_gen = len(src)
        gen_id = "gen_big"
        samples = pd.DataFrame({
            "id": [f"{gen_id}_{i:07d}" for i in range(n_gen)], "generation_id": gen_id,
            "idx": np.arange(n_gen), "path": [f"fab/c{c:03d}.png" for c in labels[src]],
            "source_image_id": images["id"].to_numpy()[src], "label": labels[src],
            "class_name": [classes[c] for c in labels[src]], "seed": np.arange(n_gen),
            "sampler": "ddpm", "steps": 100, "guidance": 1.0})
        p.add_generation(Generation(id=gen_id, name="rcdm-dinov2-x4", model_id="mdl_big",
                                    dataset_id=ds_id, encoder="dinov2", folder="fab",
                                    count=n_gen, config_json=json.dumps({"variations": 4})),
                         samples)
        _random_array(p.assets / "encodings" / "gen.npy", n_gen, dim, labels[src], 1)
        p.add(Encoding(id="enc_gen", dataset_id=ds_id, target="generation", target_id=gen_id,
                       encoder="dinov2", offline=False, dim=dim, count=n_gen,
                       array_path="encodings/gen.npy"))
    return {"dataset": ds_id, "generation": gen_id, "real": n_real, "generated": n_gen,
            "reused": False}


def cold_open(path: Path, env: dict[str, str]) -> tuple[float, subprocess.Popen, int]:
    """Seconds from process start to HTTP 200; the running studio and its port."""
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "--project", str(path),
                             "--no-browser", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return time.perf_counter() - t0, proc, port
        except OSError:
            if time.perf_counter() - t0 > 300:
                proc.kill()
                raise TimeoutError("no answer in 300 s") from None
            time.sleep(0.1)


def gallery_pages(path: Path, ids: dict[str, str]) -> tuple[float, float]:
    """Worst server time (s) of a Data-tab page and of a Generate-tab page."""
    from studio.choices import image_page
    from studio.context import StudioContext
    from studio.tabs import generate_tab

    ctx = StudioContext(path)  # after the studio process closed it (one writer per file)
    try:
        pages = image_page(ctx, ids["dataset"], None, "all", 1)[3]
        worst_data = 0.0
        for page in (1, max(1, pages // 2), pages):
            t0 = time.perf_counter()
            image_page(ctx, ids["dataset"], None, "all", page)
            worst_data = max(worst_data, time.perf_counter() - t0)
        worst_gen = 0.0
        last = generate_tab.sample_page(ctx, ids["generation"], 10 ** 9)[3]
        for page in (1, max(1, last // 2), last):
            t0 = time.perf_counter()
            generate_tab.sample_page(ctx, ids["generation"], page)
            worst_gen = max(worst_gen, time.perf_counter() - t0)
        return worst_data, worst_gen
    finally:
        ctx.close()


def band_calls(port: int, gen: str, repeats: int) -> tuple[float, float, float]:
    """(first /band call, median of later ones, median trivial call) in seconds."""
    from gradio_client import Client

    client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
    t0 = time.perf_counter()
    client.predict(gen, 0.25, 0.75, "real", "cosine", api_name="/band")
    first = time.perf_counter() - t0
    times = []
    for i in range(repeats):
        low = 0.1 + 0.05 * (i % 5)
        t0 = time.perf_counter()
        client.predict(gen, low, low + 0.5, "real", "cosine", api_name="/band")
        times.append(time.perf_counter() - t0)
    floor = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        client.predict("missing", api_name="/open_project")
        floor.append(time.perf_counter() - t0)
    return first, statistics.median(times), statistics.median(floor)


def raw_calls(port: int, gen: str, repeats: int) -> tuple[float, float]:
    """(median /band change, median trivial call) in seconds over Gradio's queue protocol
    spoken directly, as the browser does: one session and one HTTP connection for every call,
    ``POST queue/join`` then the event stream to ``process_completed``. Beside
    ``band_calls``: ``gradio_client`` adds its own per-call overhead (a new HTTP client for
    the join and another for the stream, and a 50 ms polling loop), which is not the
    studio's."""
    import httpx

    base = f"http://127.0.0.1:{port}/"
    session = f"bench{time.time_ns()}"
    with httpx.Client(timeout=120) as http:
        deps = http.get(base + "config").json()["dependencies"]
        fn = {d.get("api_name"): d.get("id", i) for i, d in enumerate(deps)}

        def call(api: str, data: list) -> float:
            t0 = time.perf_counter()
            http.post(base + "gradio_api/queue/join",
                      json={"data": data, "fn_index": fn[api], "session_hash": session,
                            "event_data": None, "trigger_id": None}).raise_for_status()
            with http.stream("GET", base + "gradio_api/queue/data",
                             params={"session_hash": session}) as events:
                for line in events.iter_lines():
                    if line.startswith("data:") and '"process_completed"' in line:
                        if not json.loads(line[5:]).get("success"):
                            raise RuntimeError(f"{api} failed: {line[:300]}")
                        return time.perf_counter() - t0
            raise RuntimeError(f"{api}: the event stream ended before the result")

        # the band's 13 inputs (BAND_INPUTS in studio/tabs/curate_tab.py), defaults after 5
        rest = ["quantile", "", "none", 0.99, 3.5, 0, "centre", None]
        call("open_project", ["missing"])  # the session's first call builds its state
        band = []
        for i in range(repeats):
            low = 0.1 + 0.05 * (i % 5)
            band.append(call("band", [gen, low, low + 0.5, "real", "cosine", *rest]))
        floor = [call("open_project", ["missing"]) for _ in range(repeats)]
    return statistics.median(band), statistics.median(floor)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 130k real + 500k generated")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dir", help="keep the project here (reused by a second run)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        root = Path(args.dir) if args.dir else Path(tmp_s)
        root.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
                   HF_HUB_OFFLINE="1", RCDM_STUDIO_HOME=str(root / "home"),
                   RCDM_STUDIO_PROJECTS=str(root))
        os.environ.update(RCDM_STUDIO_HOME=env["RCDM_STUDIO_HOME"],
                          RCDM_STUDIO_PROJECTS=str(root))
        path = root / "big.duckdb"
        t0 = time.perf_counter()
        ids = build(path, args.scale, args.dim)
        built = time.perf_counter() - t0
        db_mb = path.stat().st_size / 1e6
        opened, proc, port = cold_open(path, env)
        try:
            first, band, floor = band_calls(port, ids["generation"], args.repeats)
            raw_band, raw_floor = raw_calls(port, ids["generation"], args.repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        data_page, gen_page = gallery_pages(path, ids)
    rows = [("project rows (real / generated)",
             f"{ids['real']:,} / {ids['generated']:,}", ""),
            ("build (rows + arrays)", f"{built:.1f} s", "reused" if ids["reused"] else ""),
            ("project file", f"{db_mb:.0f} MB", ""),
            ("cold open to HTTP 200", f"{opened:.2f} s", "goal < 10 s"),
            ("Data-tab page (worst of 3)", f"{1000 * data_page:.1f} ms", "goal < 100 ms"),
            ("Generate-tab page (worst of 3)", f"{1000 * gen_page:.1f} ms", "goal < 100 ms"),
            ("first /band (distances cached)", f"{1000 * first:.0f} ms", "once per generation"),
            ("band change (/band over HTTP)", f"{1000 * band:.1f} ms", "goal < 300 ms"),
            ("trivial call over HTTP", f"{1000 * floor:.1f} ms", "round-trip floor"),
            ("band change, browser's protocol", f"{1000 * raw_band:.1f} ms",
             "one session, no gradio_client"),
            ("trivial call, browser's protocol", f"{1000 * raw_floor:.1f} ms", "")]
    for name, value, note in rows:
        print(f"{name:<34} {value:>16}  {note}")
    margins = {"cold_open": 10.0 / opened, "gallery_page": 0.1 / max(data_page, gen_page),
               "band_change": 0.3 / band}
    ratio = min(margins.values())
    print(json.dumps({"claim": "the studio stays responsive with a 650k-image project open",
                      "ratio": round(ratio, 3), "goal": 1.0, "met": ratio >= 1.0,
                      "benchmark": "studio_scale", "real": ids["real"],
                      "cold_open_s": round(opened, 3),
                      "data_page_ms": round(1000 * data_page, 2),
                      "generate_page_ms": round(1000 * gen_page, 2),
                      "first_band_ms": round(1000 * first, 1),
                      "band_change_ms": round(1000 * band, 2),
                      "http_floor_ms": round(1000 * floor, 2),
                      "band_change_raw_ms": round(1000 * raw_band, 2),
                      "http_floor_raw_ms": round(1000 * raw_floor, 2), "dim": args.dim,
                      "project_mb": round(db_mb, 1), "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
