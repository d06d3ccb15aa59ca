"""DPM-Solver++ at 20 steps against DDPM at 100 steps (the paper's) on a demo-like RCDM.

Both samplers draw the same images (same representations, same seeds) from one model; the
script measures, in one run:

- images/s of each (batched, after a warm-up; the ratio dpm++ / ddpm);
- the Fréchet distance in representation space (the PCA encoder the model is conditioned
  on, fitted on the real training split) of each sampler's images against the real test
  split, with the distance of as many real training images as a floor (the estimator's own
  noise at this sample size).

The model: the latest trained one of ``--project`` (e.g. a demo project), or a small RCDM
trained here on the bundled digits for ``--train-steps`` steps in a temporary project.

Goal (issue 7): ratio >= 4 with the DPM-Solver++ distance within 10 % of DDPM's (not more
than 1.10 x). Prints a table, then one JSON line {"claim", "ratio", "goal", "met", ...}.

Usage: python benchmarks/sampling.py [--project P] [--n 256] [--train-steps 400] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine import curation, data, encoders
from engine.config import EncodeConfig, GenerateConfig, TrainConfig
from engine.image_formats import to_channels
from engine.jobs import JobManager
from engine.project import Dataset, Encoding, Model, Project
from engine.rcdm.model import load_rcdm
from engine.rcdm.sample import sample_images
from engine.stages import common, encode_stage, import_stage, train_stage

SAMPLERS = (("ddpm", 100), ("dpm++", 20))
GOAL_RATIO = 4.0
GOAL_DISTANCE = 1.10  # dpm++ distance / ddpm distance at most


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _train_demo_model(project: Project, steps: int) -> Model:
    """Import the digits, encode them with PCA, train a small RCDM (the quick demo's size)."""
    jobs = JobManager(project)
    ds = project.get(Dataset, jobs.run_inline(import_stage.prepare(
        project, None, "digits", demo=True)).result_id)
    jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca", dim=32,
                                                         image_size=16), dataset_ref=ds.id))
    config = TrainConfig(block_channels=(16, 32), steps=steps, batch_size=64,
                         warmup_steps=min(100, steps // 4), checkpoint_every=steps,
                         preview_every=steps)
    t0 = time.perf_counter()
    job = jobs.run_inline(train_stage.prepare(project, config, ds.id, encoder="pca",
                                        name="bench-rcdm"))
    _say(f"trained {steps} steps in {time.perf_counter() - t0:.0f} s")
    return project.get(Model, job.result_id)


def run(project: Project, n: int, train_steps: int, seed: int) -> dict:
    models = [m for m in project.list(Model) if m.status == "trained" and m.encoder != "class"]
    model_row = models[-1] if models else _train_demo_model(project, train_steps)
    ds = project.get(Dataset, model_row.dataset_id)
    enc = project.get(Encoding, model_row.encoding_id)
    encoder = encoders.load_encoder(project.abs(enc.state_path))
    model, tconf, _ = load_rcdm(project.abs(model_row.checkpoint))
    splits = common.split_indices(project, ds)
    train_idx, test_idx = splits.train, splits.test
    pixels = data.dataset_pixels(project, ds, tconf.image_size)  # (N, S, S, 3) uint8
    real_test = encoder.encode(np.asarray(pixels[test_idx]))  # (T, d)
    # the conditions: n training images (seeded draw), one seed each
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(train_idx, size=min(n, len(train_idx)), replace=False))
    cond = np.asarray(project.embeddings(enc)[chosen], dtype=np.float32)  # (n, D)
    seeds = np.arange(len(chosen)) + seed
    floor = curation.frechet_distance(encoder.encode(np.asarray(pixels[chosen])), real_test)

    rows = {}
    for sampler, steps in SAMPLERS:
        config = GenerateConfig(sampler=sampler, steps=steps, batch_size=128)
        sample_images(model, cond[:8], seeds[:8], config.replace(steps=2))  # warm-up
        t0 = time.perf_counter()
        images = sample_images(model, cond, seeds, config)  # (n, S, S, C) uint8
        seconds = time.perf_counter() - t0
        # a greyscale model's images (C = 1) are read as RGB, as its files are
        fd = curation.frechet_distance(encoder.encode(to_channels(images, 3)), real_test)
        rows[sampler] = {"steps": steps, "seconds": round(seconds, 2),
                         "images_per_s": round(len(images) / seconds, 1),
                         "frechet": round(float(fd), 4)}
        _say(f"{sampler:<6} {steps:>3} steps: {len(images) / seconds:7.1f} images/s, "
             f"Fréchet distance {fd:.4f}")
    ratio = rows["dpm++"]["images_per_s"] / rows["ddpm"]["images_per_s"]
    distance_ratio = rows["dpm++"]["frechet"] / rows["ddpm"]["frechet"]
    return {
        "claim": "DPM-Solver++ 20 steps vs DDPM 100 steps: images/s ratio (goal >= 4) with "
                 "the Fréchet distance to the real test split within 10 %",
        "ratio": round(ratio, 2), "goal": GOAL_RATIO,
        "distance_ratio": round(distance_ratio, 3), "distance_goal": GOAL_DISTANCE,
        "met": bool(ratio >= GOAL_RATIO and distance_ratio <= GOAL_DISTANCE),
        "samplers": rows, "real_train_vs_test_frechet": round(float(floor), 4),
        "images": int(len(chosen)), "test_images": int(len(test_idx)),
        "model": model_row.name, "model_steps": model_row.steps_done,
        "encoder": f"{enc.encoder} ({enc.dim}-d)", "image_size": tconf.image_size,
        "threads": torch.get_num_threads(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", help="a project with a trained model (default: train one "
                                      "in a temporary project)")
    ap.add_argument("--n", type=int, default=256, help="images per sampler")
    ap.add_argument("--train-steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 is fastest for this model on a busy machine)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.project) if args.project else Path(tmp) / "bench"
        with Project(path, create=not args.project) as project:
            result = run(project, args.n, args.train_steps, args.seed)
    r = result["samplers"]
    print(f"{'sampler':<8} {'steps':>5} {'images/s':>9} {'Fréchet':>9}")
    for name, row in r.items():
        print(f"{name:<8} {row['steps']:>5} {row['images_per_s']:>9.1f} {row['frechet']:>9.4f}")
    print(f"real train vs test (floor): {result['real_train_vs_test_frechet']:.4f}; "
          f"speed ratio {result['ratio']:.2f} (goal >= {GOAL_RATIO}), distance ratio "
          f"{result['distance_ratio']:.3f} (goal <= {GOAL_DISTANCE})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
