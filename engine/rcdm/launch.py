"""Multi-process training entry point: ``train_rcdm`` under ``torchrun`` or ``accelerate launch``.

Each process runs this module; ``train_rcdm`` sees ``WORLD_SIZE`` and splits every batch
between the ranks (DDP, gradients all-reduced); rank 0 writes checkpoints, previews and the
model. Re-running the same command resumes from ``OUT/checkpoint``::

    accelerate launch --multi_gpu --num_processes 8 -m engine.rcdm.launch \\
        --pixels pixels_256.npy --cond dinov2.npy --out runs/in100 --preset imagenet256
    torchrun --standalone --nproc_per_node 2 -m engine.rcdm.launch ...   # CPU: --set device=cpu

``--pixels`` is a (N, H, W, 3) uint8 ``.npy`` and ``--cond`` a (N, D) float ``.npy``; with a
latent preset the latents are cached next to ``--pixels`` (computed once, by rank 0).
Every rank writes ``OUT/ranks/rank_<r>.json`` (its result, weight digest included) when done.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from engine.config import TrainConfig
from engine.errors import StudioError
from engine.progress import ProgressEvent

log = logging.getLogger("engine.rcdm.launch")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(preset: str | None, config_file: str | None, sets: list[str],
                 num_images: int) -> TrainConfig:
    """Preset, then a JSON file of TrainConfig fields, then ``key=value`` overrides."""
    from engine.rcdm.presets import preset_config

    values: dict = {}
    if config_file:
        values.update(json.loads(Path(config_file).read_text(encoding="utf-8")))
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise StudioError(f"--set expects key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = _parse_value(value)
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    return preset_config(preset or "tiny-cpu", num_images=num_images, **values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train an RCDM, one process per device")
    ap.add_argument("--pixels", required=True, help="(N, H, W, 3) uint8 .npy")
    ap.add_argument("--cond", required=True, help="(N, D) float .npy representations")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--preset", help="tiny-cpu (default) or imagenet256")
    ap.add_argument("--config", help="JSON file of TrainConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one TrainConfig field (JSON value), repeatable")
    ap.add_argument("--no-resume", action="store_true")
    args = ap.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank {rank}] %(asctime)s %(name)s: %(message)s")
    from engine.rcdm.latent import cached_latents
    from engine.rcdm.train import _Processes, train_rcdm

    try:
        pixels = np.load(args.pixels, mmap_mode="r", allow_pickle=False)
        cond = np.load(args.cond, allow_pickle=False)
        config = build_config(args.preset, args.config, args.set, len(pixels))
        latents = None
        if config.space == "latent":
            # cached next to the pixels, shared by every run on them; rank 0 encodes
            procs = _Processes(config)
            kw = dict(flip=config.hflip, latent_scale=config.latent_scale,
                      device=str(procs.device))
            if procs.main:
                latents = cached_latents(pixels, config.vae_id, Path(args.pixels).parent, **kw)
            procs.barrier()
            if not procs.main:
                latents = cached_latents(pixels, config.vae_id, Path(args.pixels).parent, **kw)

        def progress(event: ProgressEvent) -> None:
            if rank == 0 and event.stage == "train":
                log.info("step %d/%d %s", event.step, event.total,
                         " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items()))

        result = train_rcdm(pixels if config.space == "latent" else np.asarray(pixels), cond,
                            config, Path(args.out), progress=progress,
                            resume=not args.no_resume, latents=latents,
                            extra={"launcher": "engine.rcdm.launch"})
    except StudioError as exc:
        log.error("%s", exc)
        return 2
    marker = Path(args.out) / "ranks" / f"rank_{result['rank']}.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
