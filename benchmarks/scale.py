"""Scale rehearsal (issue 17): an ImageNet-100-shaped project through every stage, measured.

Builds a source folder of 100 class sub-folders x 1,300 seeded, image-like JPEGs
(``--scale`` shrinks the count, ``--size`` sets the side; each class a smooth colour field,
each image that field mixed with its own blurred noise, so encoders and classifiers see some
class signal) with a process pool (not a measured stage; its time is printed), then runs the
stages a user would, one at a time, each as its own process (the CLI, ``python -m
studio.cli``, in a subprocess):

1. ``import``: link mode, ``--workers`` worker processes, 10 % validation and 4 % test
   (about ImageNet-100's 50 test images per class);
2. ``encode``: the dataset with ``pca`` (the cheapest offline encoder that looks at the
   pixels: ``class`` is a one-hot of the label, ``simclr`` trains a CNN first), 32
   components of the images at 16 px;
3. the generation: 4 variations per training image, written as PNG files (the generate
   stage's format) by this script: perturbed copies of the source (its pixels plus seeded
   Gaussian noise), not a diffusion model's samples (RCDM sampling at this scale needs a
   GPU). The engine has no route that imports a folder of generated images, so the files
   are registered as a generation through ``Project.add_generation`` (the engine's public
   write path, as tests/test_streams.py and benchmarks/studio_scale.py fabricate one) in a
   child process (``register``, measured); then ``encode --generation`` re-encodes them
   with the dataset's fitted pca (``encode gen``, measured);
4. ``curate``: a band over all generated samples (the middle ``--keep`` of each class by
   cosine distance to the real class centroid), saved as a selection;
5. ``train``: the evaluate stage's training loop (``train_classifier``, in a child
   process) on the real training images + the selection, streamed from their files
   (``engine.streams.ImageFiles``, ``data_path="stream"``, DataLoader workers), resnet_tiny
   at ``--size`` px, batch 64, cancelled after ``--train-steps`` steps (the CLI's
   ``evaluate`` has no step budget, and a whole epoch of the mix takes 2 CPU cores over an
   hour at half scale); images/s over the steps after the first, the time before the first step
   (the streamed path's pass for the channel statistics over the whole mix) apart;
6. ``export``: the selection as an ImageFolder of hard links (``export --link``);
7. ``studio`` (unless ``--skip-studio``): cold open to HTTP 200, gallery pages, band
   changes over HTTP on this project, with benchmarks/studio_scale.py's functions.

Per stage: wall seconds, images/s (the images the stage handles / its seconds), peak RSS of
the stage's process tree (the sum over the process and its worker children, sampled every
50 ms with psutil: a peak shorter than that can be missed), and after it the disk the
project uses (``du``-style: allocated blocks of the project file and its assets, hard links
to the source not counted, reported apart) beside the source folder's.

Goals (issue 17): import >= 1,000 images/s in link mode; the import's addition to the
project <= 1.1x (source + thumbnails) (as benchmarks/import_scale.py counts it: bytes not
hard-linked to the source plus the project file, over source bytes + thumbnail bytes);
studio cold open < 10 s, gallery page < 100 ms, band change < 300 ms. The training goal
(streamed >= 0.9x in-memory images/s, flat RSS) needs the in-memory path beside it:
benchmarks/stream_train.py measures that; here the streamed rate and RSS are reported.
ratio = the smallest goal margin (>= 1: every goal met).

Usage: python benchmarks/scale.py [--scale 1.0] [--size 64] [--dir D] [--workers W]
       [--skip-studio] [--train-steps 100] [--keep 0.25]
Last line: one JSON object {"claim", "ratio", "goal", "met", "stages", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import import_scale, studio_scale  # noqa: E402  (after the path)

CLASSES = 100
PER_CLASS = 1300
VARIATIONS = 4
VAL_FRACTION = 0.1
TEST_FRACTION = 0.04  # ~50 of 1,300 per class, ImageNet-100's held-out share
GOAL_IMPORT_RATE = 1000.0
GOAL_OVERHEAD = 1.1
GEN_ID = "gen_scale"


# ---------------------------------------------------------------- the source images

def _class_field(label: int, size: int) -> np.ndarray:
    """A smooth colour field for ``label``: (size, size, 3) float32 in [0, 255]."""
    from PIL import Image

    low = np.random.default_rng([7, label]).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float32)


def _write_class(job: tuple[Path, int, int, int]) -> int:
    """Write class ``label``'s ``n`` JPEGs; returns their bytes."""
    from PIL import Image

    folder, label, n, size = job
    field = _class_field(label, size)
    d = folder / f"class_{label:03d}"
    d.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        rng = np.random.default_rng([label, i])
        low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        own = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float32)
        px = 0.55 * field + 0.45 * own + rng.normal(0, 6, (size, size, 3))
        path = d / f"{i:05d}.jpg"
        Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def build_source(folder: Path, per_class: int, size: int, workers: int) -> int:
    """``CLASSES`` x ``per_class`` JPEGs under ``folder`` (kept if there); their bytes."""
    done = folder / ".complete"
    if done.exists():
        return int(done.read_text())
    with Pool(workers) as pool:
        total = sum(pool.map(_write_class,
                             [(folder, c, per_class, size) for c in range(CLASSES)]))
    done.write_text(str(total))
    return total


# ---------------------------------------------------------------- the generation

def _write_variations(job: tuple[str, list[tuple[int, str]], int]) -> None:
    """Write each (idx, source path) as a perturbed copy: source + N(0, 12) noise."""
    from PIL import Image

    out, items, size = job
    for idx, src in items:
        with Image.open(src) as img:
            px = np.asarray(img.convert("RGB").resize((size, size)), np.float32)
        rng = np.random.default_rng(idx)
        px = np.clip(px + rng.normal(0, 12, px.shape), 0, 255).astype(np.uint8)
        Image.fromarray(px).save(Path(out) / f"{idx:07d}.png", compress_level=4)


def write_generation(project_path: Path, size: int, workers: int) -> dict:
    """The generation's files (4 per training image) in the project's assets; its plan."""
    from engine.project import Dataset, Project

    with Project(project_path) as p:
        ds = p.list(Dataset)[0]
        images = p.images(ds.id)
        train = images[images["split"] == "train"]
        src_paths = [str(p.abs(rel)) for rel in train["path"]]
        out = p.assets / "generations" / GEN_ID
    out.mkdir(parents=True, exist_ok=True)
    src = np.repeat(np.arange(len(train)), VARIATIONS)  # 4 samples per training image
    items = [(int(i), src_paths[s]) for i, s in enumerate(src)]
    chunk = 2000
    with Pool(workers) as pool:
        pool.map(_write_variations,
                 [(str(out), items[k:k + chunk], size) for k in range(0, len(items), chunk)])
    return {"dataset": ds.id, "folder": str(out), "n": len(items),
            "source_ids": train["id"].to_numpy()[src].tolist(),
            "labels": train["label"].to_numpy()[src].tolist(),
            "class_names": train["class_name"].to_numpy()[src].tolist()}


def register(project_path: Path, plan_path: Path) -> None:
    """Child process: the written files as a generation of the dataset (Project's API)."""
    import pandas as pd

    from engine.project import Encoding, Generation, Model, Project

    plan = json.loads(plan_path.read_text())
    n = plan["n"]
    with Project(project_path) as p:
        folder = Path(plan["folder"])
        # every generation names its model (export's manifest records it); no RCDM was
        # trained here, so the row says so: status "cancelled", no checkpoint
        enc = [e for e in p.list(Encoding) if e.dataset_id == plan["dataset"]][-1]
        model = p.add(Model(id="mdl_none", name="none: perturbed copies (benchmarks/scale.py)",
                            dataset_id=plan["dataset"], encoding_id=enc.id, encoder="pca",
                            status="cancelled"))
        samples = pd.DataFrame({
            "id": [f"{GEN_ID}_{i:07d}" for i in range(n)], "generation_id": GEN_ID,
            "idx": np.arange(n), "path": [p.rel(folder / f"{i:07d}.png") for i in range(n)],
            "source_image_id": plan["source_ids"], "label": plan["labels"],
            "class_name": plan["class_names"], "seed": np.arange(n), "sampler": "noise",
            "steps": 0, "guidance": 1.0})
        p.add_generation(Generation(
            id=GEN_ID, name="perturbed-x4", model_id=model.id, dataset_id=plan["dataset"], encoder="pca",
            folder=p.rel(folder), count=n,
            config_json=json.dumps({"variations": VARIATIONS, "mode": "variations",
                                    "note": "benchmarks/scale.py: source + N(0, 12) noise, "
                                            "not a diffusion model's samples"})), samples)


# ---------------------------------------------------------------- the classifier

def train_child(project_path: Path, selection_id: str, size: int, steps: int,
                loader_workers: int) -> None:
    """Child process: the evaluate stage's training loop (``train_classifier``) on the real
    training images + the selection's samples, streamed from their files
    (``engine.streams.ImageFiles``, ``data_path="stream"``), cancelled after ``steps``
    optimiser steps; prints one JSON line of step times."""
    from engine import streams
    from engine.config import EvalConfig
    from engine.errors import Cancelled
    from engine.evaluate import classifier_training
    from engine.progress import CancelToken
    from engine.project import Dataset, Project, Selection

    started = time.perf_counter()
    with Project(project_path) as p:
        sel = p.get(Selection, selection_id)
        ds = p.list(Dataset)[0]
        real = p.images(ds.id, split="train")
        val = p.images(ds.id, split="val")
        samples = p.samples(sel.generation_id).iloc[p.selection_members(sel)]
        paths = [p.abs(x) for x in [*real["path"], *samples["path"]]]
        val_paths = [p.abs(x) for x in val["path"]]
        num_classes = int(ds.num_classes)
    y = np.concatenate([real["label"].to_numpy(np.int64), samples["label"].to_numpy(np.int64)])
    is_syn = np.r_[np.zeros(len(real), bool), np.ones(len(samples), bool)]
    config = EvalConfig(arch="resnet_tiny", image_size=size, epochs=1, batch_size=64, seed=0,
                        data_path="stream", loader_workers=loader_workers)
    classifier_training.REPORTS_PER_EPOCH = 10**9  # a report after every step
    cancel = CancelToken()
    times: list[tuple[int, float]] = []

    def progress(event) -> None:
        if event.step:
            times.append((int(event.step), time.perf_counter()))
        if event.step >= steps:
            cancel.cancel()

    try:
        classifier_training.train_classifier(
            streams.ImageFiles(paths, size), y, streams.ImageFiles(val_paths, size),
            val["label"].to_numpy(np.int64), num_classes, config, progress=progress,
            cancel=cancel, is_synthetic=is_syn)
    except Cancelled:
        pass
    (s0, t0), (s1, t1) = times[0], times[-1]
    images = (s1 - s0) * config.batch_size
    print(json.dumps({"mix": len(paths), "steps": s1, "images": images,
                      "rate": images / max(t1 - t0, 1e-9),
                      "before_first_step_s": times[0][1] - started}))


# ---------------------------------------------------------------- measuring

def run_stage(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd``; (seconds, peak RSS MB of its process tree, stdout)."""
    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE,
                                text=True)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            total = 0
            try:
                for p in [root, *root.children(recursive=True)]:
                    try:
                        total += p.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                pass
            peak = max(peak, total)
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        err = proc.stderr.read()
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} ... failed ({proc.returncode}):\n"
                           f"{text[-2000:]}\n{err[-3000:]}")
    return seconds, peak / 2**20, text


def last_json(text: str) -> dict:
    """The last line of a ``--json`` command's output, parsed."""
    return json.loads(text.strip().splitlines()[-1])


def disk_use(root: Path, skip_inodes: frozenset = frozenset()) -> tuple[int, int]:
    """(bytes allocated to the files under ``root`` not in ``skip_inodes``, apparent bytes of
    those skipped): what ``du`` counts, hard links to the source apart."""
    own = shared = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in skip_inodes:
                shared += st.st_size
            else:
                own += st.st_blocks * 512
    return own, shared


def project_disk(project: Path, source_inodes: frozenset) -> tuple[int, int]:
    """(project file + assets on disk, hard links to the source not counted; their bytes)."""
    own, shared = disk_use(project.with_suffix(".assets"), source_inodes)
    return own + project.stat().st_blocks * 512, shared


# ---------------------------------------------------------------- the run

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0,
                    help="1.0 = 100 classes x 1,300 images; 0.05 for a quick run")
    ap.add_argument("--size", type=int, default=64, help="image side in px")
    ap.add_argument("--dir", help="keep the build here (default: a temporary folder)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes (import, building, loader workers)")
    ap.add_argument("--skip-studio", action="store_true")
    ap.add_argument("--train-steps", type=int, default=100,
                    help="classifier training steps (batch 64) on real + selected")
    ap.add_argument("--keep", type=float, default=0.25,
                    help="fraction of each class's generated samples the band keeps")
    ap.add_argument("--register", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--train-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.register:
        register(Path(args.register[0]), Path(args.register[1]))
        return 0
    if args.train_child:
        project, sel, size, steps, loaders = args.train_child
        train_child(Path(project), sel, int(size), int(steps), int(loaders))
        return 0
    if not 0 < args.scale <= 1 or not 8 <= args.size <= 1024 or args.workers < 1:
        ap.error("--scale must be in (0, 1], --size in [8, 1024], --workers >= 1")
    per_class = max(10, int(round(PER_CLASS * args.scale)))
    tmp = None
    if args.dir:
        root = Path(args.dir).resolve()
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="scale_")
        root = Path(tmp)
    try:
        return rehearse(args, root, per_class)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def rehearse(args: argparse.Namespace, root: Path, per_class: int) -> int:
    n = CLASSES * per_class
    src = root / f"src_{per_class}x{args.size}"
    project = root / "projects" / "scale.duckdb"
    if project.exists():  # a rehearsal measures a fresh project; the source is kept
        project.unlink()
        shutil.rmtree(project.with_suffix(".assets"), ignore_errors=True)
    project.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", RCDM_STUDIO_HOME=str(root / "home"),
               RCDM_STUDIO_PROJECTS=str(project.parent))
    os.environ.update(RCDM_STUDIO_HOME=env["RCDM_STUDIO_HOME"],
                      RCDM_STUDIO_PROJECTS=env["RCDM_STUDIO_PROJECTS"])
    cli = [sys.executable, "-m", "studio.cli", "--project", str(project)]

    t0 = time.perf_counter()
    source_bytes = build_source(src, per_class, args.size, args.workers)
    source_disk, _ = disk_use(src)
    print(f"source: {n:,} JPEGs of {args.size} px ({source_bytes / 1e6:.1f} MB, "
          f"{source_disk / 1e6:.1f} MB on disk) in {time.perf_counter() - t0:.1f} s "
          f"(not a measured stage)", flush=True)
    source_inodes = frozenset((st.st_dev, st.st_ino) for st in
                              (p.stat() for p in src.rglob("*.jpg")))
    stages: list[dict] = []

    def stage(name: str, cmd: list[str], images: int) -> str:
        seconds, rss, out = run_stage(cmd, env)
        disk, linked = project_disk(project, source_inodes)
        row = {"stage": name, "seconds": round(seconds, 2), "images": images,
               "images_per_s": round(images / seconds, 1), "peak_rss_mb": round(rss, 1),
               "project_disk_mb": round(disk / 1e6, 1), "linked_mb": round(linked / 1e6, 1)}
        stages.append(row)
        rate = f"{images / seconds:9.1f} images/s" if images else " " * 18
        print(f"{name:<11} {seconds:8.1f} s {rate}  peak RSS {rss:7.0f} MB  project "
              f"{disk / 1e6:8.1f} MB", flush=True)
        return out

    # 1. import
    out = stage("import", [*cli, "import", str(src), "--name", "scale", "--mode", "link",
                           "--workers", str(args.workers), "--val-fraction", str(VAL_FRACTION),
                           "--test-fraction", str(TEST_FRACTION), "--json"], n)
    from engine.project import Dataset, Project

    with Project(project) as p:
        ds = p.list(Dataset)[0]
        ds_root = p.abs(ds.root)
        n_train = int(ds.num_train)
    thumb_bytes, _ = import_scale.tree_bytes(ds_root / "thumbs")
    own_apparent, _ = import_scale.tree_bytes(project.with_suffix(".assets"), source_inodes)
    overhead = (own_apparent + project.stat().st_size) / (source_bytes + thumb_bytes)

    # 2. encode the dataset
    stage("encode", [*cli, "encode", "--encoder", "pca", "--dim", "32", "--image-size", "16",
                     "--json"], n)

    # 3. the generation: files (not measured), registered, re-encoded
    t0 = time.perf_counter()
    plan = write_generation(project, args.size, args.workers)
    n_gen = plan["n"]
    written = time.perf_counter() - t0
    print(f"generation: {n_gen:,} PNGs written in {written:.1f} s ({n_gen / written:.0f} "
          f"images/s; stands in for sampling, not a measured stage)", flush=True)
    plan_path = root / "generation_plan.json"
    plan_path.write_text(json.dumps(plan))
    stage("register", [sys.executable, __file__, "--register", str(project), str(plan_path)],
          n_gen)
    plan_path.unlink()
    stage("encode gen", [*cli, "encode", "--generation", GEN_ID, "--encoder", "pca",
                         "--json"], n_gen)

    # 4. curation: the band over every generated sample, saved as a selection
    half = args.keep / 2
    stage("curate", [*cli, "curate", "--generation", GEN_ID, "--low", str(0.5 - half),
                           "--high", str(0.5 + half), "--name", "band", "--json"], n_gen)
    with Project(project) as p:
        from engine.project import Selection

        sel = next(s for s in p.list(Selection) if s.name == "band")
        kept = int(sel.count)

    # 5. classifier training, streamed from the files, for a bounded number of steps
    out = stage("train", [sys.executable, __file__, "--train-child", str(project), sel.id,
                          str(args.size), str(args.train_steps), str(min(args.workers, 4))],
                0)
    trained = last_json(out)
    stages[-1].update(images=trained["images"], images_per_s=round(trained["rate"], 1),
                      before_first_step_s=round(trained["before_first_step_s"], 1),
                      mix=trained["mix"])
    print(f"train: {trained['images']:,} images in {trained['steps']} steps at "
          f"{trained['rate']:.1f} images/s (steps after the first); "
          f"{trained['before_first_step_s']:.1f} s before the first step (the mix of "
          f"{trained['mix']:,} files, the channel statistics' pass)", flush=True)

    # 6. export of the selection, hard links
    export_dir = root / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    stage("export", [*cli, "export", "--selection", sel.id, "--link", "--out",
                     str(export_dir), "--json"], kept)
    export_disk, _ = disk_use(export_dir, frozenset(
        (st.st_dev, st.st_ino) for st in (p.stat() for p in
                                          project.with_suffix(".assets").rglob("*.png"))))

    # 7. the studio on this project
    studio = None
    if not args.skip_studio:
        studio = measure_studio(project, env, {"dataset": ds.id, "generation": GEN_ID})

    report(args, n, n_train, n_gen, kept, source_bytes, source_disk, thumb_bytes, overhead,
           export_disk, stages, studio)
    return 0


def measure_studio(project: Path, env: dict[str, str], ids: dict[str, str]) -> dict:
    """Cold open, gallery pages and band changes (benchmarks/studio_scale.py's functions)."""
    opened, proc, port = studio_scale.cold_open(project, env)
    try:
        first, band, floor = studio_scale.band_calls(port, ids["generation"], 5)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    data_page, gen_page = studio_scale.gallery_pages(project, ids)
    print(f"studio: cold open {opened:.2f} s, pages {1000 * data_page:.1f} / "
          f"{1000 * gen_page:.1f} ms, first band {1000 * first:.0f} ms, band change "
          f"{1000 * band:.1f} ms (HTTP floor {1000 * floor:.1f} ms)", flush=True)
    return {"cold_open_s": round(opened, 3), "data_page_ms": round(1000 * data_page, 2),
            "generate_page_ms": round(1000 * gen_page, 2),
            "first_band_ms": round(1000 * first, 1), "band_change_ms": round(1000 * band, 2),
            "http_floor_ms": round(1000 * floor, 2)}


def report(args, n, n_train, n_gen, kept, source_bytes, source_disk, thumb_bytes, overhead,
           export_disk, stages, studio) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{n:,} real images ({n_train:,} train) of {args.size} px, {n_gen:,} generated, "
          f"{kept:,} kept by the band; source {source_disk / 1e6:.1f} MB on disk, "
          f"thumbnails {thumb_bytes / 1e6:.1f} MB, export {export_disk / 1e6:.1f} MB "
          f"(hard links not counted)")
    print(f"{'stage':<11} {'seconds':>8} {'images':>9} {'images/s':>9} {'peak RSS MB':>12} "
          f"{'project MB':>11}")
    for r in stages:
        print(f"{r['stage']:<11} {r['seconds']:>8.1f} {r['images']:>9,} "
              f"{r['images_per_s']:>9.1f} {r['peak_rss_mb']:>12.0f} "
              f"{r['project_disk_mb']:>11.1f}")
    by = {r["stage"]: r for r in stages}
    margins = {"import_rate": by["import"]["images_per_s"] / GOAL_IMPORT_RATE,
               "import_overhead": GOAL_OVERHEAD / overhead}
    if studio:
        margins.update(cold_open=10.0 / studio["cold_open_s"],
                       gallery_page=100.0 / max(studio["data_page_ms"],
                                                studio["generate_page_ms"]),
                       band_change=300.0 / studio["band_change_ms"])
    ratio = min(margins.values())
    slowest = min(stages, key=lambda r: r["images_per_s"])
    print(f"import overhead {overhead:.3f}x (source + thumbnails); slowest stage "
          f"{slowest['stage']} at {slowest['images_per_s']:.1f} images/s")
    print(json.dumps({
        "claim": f"an ImageNet-100-shaped project ({n:,} real JPEGs + {n_gen:,} generated, "
                 f"{args.size} px) runs every stage on this machine: import >= "
                 f"{GOAL_IMPORT_RATE:.0f} images/s, import overhead <= {GOAL_OVERHEAD}x "
                 f"(source + thumbnails)"
                 + ("" if not studio else ", studio cold open < 10 s, page < 100 ms, "
                                          "band change < 300 ms"),
        "ratio": round(ratio, 3), "goal": 1.0, "met": bool(ratio >= 1.0),
        "margins": {k: round(v, 3) for k, v in margins.items()},
        "stages": stages, "studio": studio, "import_overhead": round(overhead, 3),
        "slowest_stage": slowest["stage"], "real": n, "train": n_train, "generated": n_gen,
        "kept": kept, "size": args.size, "scale": args.scale, "workers": args.workers,
        "train_steps": args.train_steps, "encoder": "pca (32 components at 16 px)",
        "source_mb": round(source_bytes / 1e6, 1), "source_disk_mb": round(source_disk / 1e6, 1),
        "thumbnails_mb": round(thumb_bytes / 1e6, 1), "export_disk_mb": round(export_disk / 1e6, 1),
        "cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    raise SystemExit(main())
