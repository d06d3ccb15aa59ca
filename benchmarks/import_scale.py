"""Import at scale (issue 17): link mode with parallel workers against the PNG re-encode path.

Claim: importing N seeded noise JPEGs of 160 px (an ImageFolder of 100 classes) in ``link``
mode with the worker processes runs at >= 1,000 images/s on 2 cores and >= 5x the images/s of
the import as it was before issue 17 (every image decoded, re-encoded as PNG, a PNG
thumbnail, one file after the other), and adds at most 1.1x (source bytes + thumbnails) to
the project.

Side by side in one run, on the same folder (its files in the page cache for both):

- ``baseline``: the loop ``engine.data.write_dataset_files`` ran before issue 17, copied here
  (scan, ``validate_image``, save the PNG, save a PNG thumbnail, the rows and the splits);
- ``ours``: ``engine.data.write_dataset_files`` with ``ImportConfig(mode="link")`` (full
  decode of every file, hard link, thumbnail, digest; ``workers`` 0 = one per core);
- ``ours, whole job``: the same through the import job (``JobManager.run_inline``: plan,
  workers, rename, ingest of the rows into DuckDB) into a fresh project, whose bytes give the
  overhead: every file of the project that is not a hard link of a source file, plus the
  project file, over (source bytes + thumbnail bytes).

Usage: python benchmarks/import_scale.py [--n 5000] [--side 160] [--classes 100]
       [--workers 0] [--quality 90]
Last line: one JSON object {"claim", "ratio", "goal", "met", ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine import data
from engine.config import ImportConfig
from engine.image_store import make_thumbnail, validate_image

GOAL_RATIO = 5.0
GOAL_RATE = 1000.0
GOAL_OVERHEAD = 1.1


def make_folder(root: Path, n: int, side: int, classes: int, quality: int) -> int:
    """``n`` seeded noise JPEGs (``side`` px square) spread over ``classes`` folders; returns
    their total bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(n):
        d = root / f"class_{i % classes:03d}"
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{i:07d}.jpg"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
            path, quality=quality)
        total += path.stat().st_size
    return total


def legacy_import(folder: Path, work_root: Path, config: ImportConfig) -> pd.DataFrame:
    """The import loop as it was before issue 17 (every image a PNG, serially)."""
    classes, per_class = data.scan_image_folder(folder)
    rows = []
    work_root.mkdir(parents=True)
    for label, (class_name, files) in enumerate(zip(classes, per_class)):
        for path in files:
            img, reason = validate_image(path, config)
            if img is None:
                continue
            idx = len(rows)
            sub = f"{label:04d}/{idx:06d}.png"
            image_path, thumb_path = work_root / "images" / sub, work_root / "thumbs" / sub
            image_path.parent.mkdir(parents=True, exist_ok=True)
            thumb_path.parent.mkdir(parents=True, exist_ok=True)
            img.save(image_path, format="PNG", compress_level=4)
            make_thumbnail(img, config.thumbnail_size).save(thumb_path, format="PNG",
                                                            compress_level=4)
            rows.append({"idx": idx, "path": f"images/{sub}", "label": label,
                         "class_name": class_name, "width": img.width, "height": img.height,
                         "source_path": path.relative_to(folder).as_posix()})
    images = pd.DataFrame(rows)
    images["split"] = data.split_images(images["label"].to_numpy(np.int64), config)
    return images


def tree_bytes(root: Path, skip_inodes: set[tuple[int, int]] = frozenset()) -> tuple[int, int]:
    """(bytes of the files under ``root`` not in ``skip_inodes``, bytes of those skipped)."""
    own = shared = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in skip_inodes:
                shared += st.st_size
            else:
                own += st.st_size
    return own, shared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--side", type=int, default=160)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()

    from engine.import_pool import available_cores, import_workers
    from engine.jobs import JobManager
    from engine.project import Dataset, Project
    from engine.stages import import_stage

    config = ImportConfig(mode="link", workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="import_scale_") as tmp:
        tmp = Path(tmp)
        src = tmp / "src"
        t = time.perf_counter()
        source_bytes = make_folder(src, args.n, args.side, args.classes, args.quality)
        print(f"wrote {args.n} JPEGs of {args.side} px ({source_bytes / 1e6:.1f} MB) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        source_inodes = {(st.st_dev, st.st_ino) for st in
                         (p.stat() for p in src.rglob("*.jpg"))}

        # 1. ours: link mode, worker processes
        t = time.perf_counter()
        written = data.write_dataset_files(src, tmp / "ours", "datasets/ours", "ours", config)
        ours_s = time.perf_counter() - t
        assert len(written["images"]) == args.n, written["skipped"][:3]
        assert written["stored"] == {"linked": args.n}, written["stored"]
        shutil.rmtree(tmp / "ours")

        # 2. the baseline: the PNG re-encode path, serially
        t = time.perf_counter()
        legacy = legacy_import(src, tmp / "legacy", ImportConfig())
        legacy_s = time.perf_counter() - t
        assert len(legacy) == args.n
        legacy_bytes, _ = tree_bytes(tmp / "legacy")
        shutil.rmtree(tmp / "legacy")

        # 3. ours through the whole job, into a project: time and bytes added
        before = 0
        with Project(tmp / "proj") as project:
            before = (tmp / "proj.duckdb").stat().st_size
            jobs = JobManager(project)  # (its GPU probe imports torch: not the import's time)
            t = time.perf_counter()
            job = jobs.run_inline(import_stage.prepare(project, src, "scale", config))
            job_s = time.perf_counter() - t
            ds_root = project.abs(project.get(Dataset, job.result_id).root)
        db_added = (tmp / "proj.duckdb").stat().st_size - before
        thumb_bytes, _ = tree_bytes(ds_root / "thumbs")
        own, shared = tree_bytes(tmp / "proj.assets", source_inodes)
        added = own + db_added
        overhead = added / (source_bytes + thumb_bytes)

    ours_rate, legacy_rate, job_rate = args.n / ours_s, args.n / legacy_s, args.n / job_s
    ratio = ours_rate / legacy_rate
    workers = import_workers(config, args.n)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({available_cores()} available), {workers} import worker process(es)")
    print(f"{'path':<34} {'seconds':>8} {'images/s':>9}")
    print(f"{'baseline (PNG re-encode, serial)':<34} {legacy_s:>8.2f} {legacy_rate:>9.0f}")
    print(f"{'ours (link, workers)':<34} {ours_s:>8.2f} {ours_rate:>9.0f}")
    print(f"{'ours, whole job (+ DuckDB ingest)':<34} {job_s:>8.2f} {job_rate:>9.0f}")
    print(f"source {source_bytes / 1e6:.1f} MB; baseline stored {legacy_bytes / 1e6:.1f} MB "
          f"({legacy_bytes / source_bytes:.2f}x the source); ours added {added / 1e6:.1f} MB "
          f"(thumbnails {thumb_bytes / 1e6:.1f} MB, project file {db_added / 1e6:.1f} MB; "
          f"{shared / 1e6:.1f} MB hard-linked): {overhead:.2f}x (source + thumbnails), "
          f"{added / source_bytes:.2f}x the source")
    met = ratio >= GOAL_RATIO and ours_rate >= GOAL_RATE and overhead <= GOAL_OVERHEAD
    print(json.dumps({
        "claim": f"link-mode import of {args.n} JPEGs of {args.side} px with worker processes: "
                 f">= {GOAL_RATE:.0f} images/s and >= {GOAL_RATIO:g}x the PNG re-encode "
                 f"path, project overhead <= {GOAL_OVERHEAD}x (source + thumbnails)",
        "ratio": round(ratio, 2), "goal": GOAL_RATIO, "met": bool(met),
        "images_per_s": round(ours_rate, 1), "baseline_images_per_s": round(legacy_rate, 1),
        "job_images_per_s": round(job_rate, 1), "overhead": round(overhead, 3),
        "baseline_bytes_ratio": round(legacy_bytes / source_bytes, 2),
        "workers": workers, "n": args.n}))


if __name__ == "__main__":
    main()
