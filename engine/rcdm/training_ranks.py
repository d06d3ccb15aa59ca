"""Multi-process training entry point: ``train_rcdm`` under ``torchrun`` or ``accelerate launch``.

Each process runs this module; ``train_rcdm`` sees ``WORLD_SIZE`` and splits every batch
between the ranks (DDP, gradients all-reduced); rank 0 writes checkpoints, previews and the
model. Re-running the same command resumes from ``OUT/checkpoint``::

    accelerate launch --multi_gpu --num_processes 8 -m engine.rcdm.training_ranks \\
        --pixels pixels_256.npy --cond dinov2.npy --out runs/in100 --preset imagenet256
    torchrun --standalone --nproc_per_node 2 -m engine.rcdm.training_ranks ...   # CPU: --set device=cpu

``--pixels`` is a (N, H, W, 3) uint8 ``.npy`` and ``--cond`` a (N, D) float ``.npy``;
``--index`` an (n,) int64 ``.npy`` of the rows to train on (default: all N), applied to both.
With a latent preset the latents of all N images are cached next to ``--pixels`` (computed
once, by rank 0) and the rows are taken from that cache. With ``--progress FILE`` rank 0
appends one ProgressEvent JSON per line to FILE; SIGTERM stops every rank after its current
step (checkpoint saved, exit code 3). Every rank writes ``OUT/ranks/rank_<r>.json`` (its
result, weight digest included) when done.

``launch_train_rcdm`` is what the train job stage calls when ``config.processes`` > 1: it
writes the run's config and rows and hands them to the runtime's launcher
(``engine.torchrun.launcher.run_processes``: torchrun, rank 0's progress, cancel, errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import TrainConfig, parse_overrides
from engine.errors import DatasetError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.torchrun.launcher import LAUNCH_DIR, RANKS_DIR, run_processes

log = logging.getLogger("engine.rcdm.training_ranks")

MODULE = "engine.rcdm.training_ranks"


def build_config(preset: str | None, config_file: str | None, sets: list[str],
                 num_images: int) -> TrainConfig:
    """Preset, then a JSON file of TrainConfig fields, then ``key=value`` overrides."""
    from engine.rcdm.presets import preset_config

    values: dict = {}
    if config_file:
        values.update(json.loads(Path(config_file).read_text(encoding="utf-8")))
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    values.update(parse_overrides(TrainConfig, sets))
    return preset_config(preset or "tiny-cpu", num_images=num_images, **values)


def _rows(index_path: str | None, n: int) -> np.ndarray:
    """(n_rows,) int64 row numbers from ``index_path``, or all ``n`` rows; checked in range."""
    if not index_path:
        return np.arange(n, dtype=np.int64)
    idx = np.asarray(np.load(index_path, allow_pickle=False))
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise DatasetError(f"--index must be a 1-d integer array, got {idx.dtype} {idx.shape}")
    if len(idx) and (idx.min() < 0 or idx.max() >= n):
        raise DatasetError(f"--index has rows outside [0, {n}): min {idx.min()}, "
                           f"max {idx.max()}")
    return idx.astype(np.int64)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train an RCDM, one process per device")
    ap.add_argument("--pixels", required=True, help="(N, H, W, 3) uint8 .npy")
    ap.add_argument("--cond", required=True, help="(N, D) float .npy representations")
    ap.add_argument("--out", required=True, help="run folder")
    ap.add_argument("--index", help="(n,) int64 .npy: train on these rows of --pixels and "
                                    "--cond (default: all rows)")
    ap.add_argument("--preset", help="tiny-cpu (default) or imagenet256")
    ap.add_argument("--config", help="JSON file of TrainConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one TrainConfig field (JSON value), repeatable")
    ap.add_argument("--progress", help="rank 0 appends progress events (JSON lines) here")
    ap.add_argument("--extra", help="JSON file of provenance for the saved model's rcdm.json")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--init", help="a model folder to start from (fine-tuning)")
    args = ap.parse_args(argv)
    from engine.rcdm.training import train_rcdm_files
    from engine.torchrun.ranks import progress_writer, rank_setup, run_rank, write_rank_result

    rank, cancel = rank_setup()
    write = progress_writer(args.progress, rank)

    def progress(event: ProgressEvent) -> None:
        if rank != 0:
            return
        if event.stage == "train":
            log.info("step %d/%d %s", event.step, event.total,
                     " ".join(f"{k}={v:.4g}" for k, v in event.metrics.items()))
        write(event)

    def body() -> dict[str, Any]:
        n = len(np.load(args.pixels, mmap_mode="r", allow_pickle=False))
        idx = _rows(args.index, n)
        config = build_config(args.preset, args.config, args.set, len(idx))
        extra = {"launcher": MODULE}
        if args.extra:
            extra = json.loads(Path(args.extra).read_text(encoding="utf-8")) | extra
        return train_rcdm_files(args.pixels, args.cond, config, Path(args.out), index=idx,
                                progress=progress, cancel=cancel, resume=not args.no_resume,
                                extra=extra, init=args.init)

    code, result = run_rank(body)
    if code:
        return code
    write_rank_result(Path(args.out), result["rank"], result)
    return 0


def launch_train_rcdm(pixels_path: str | Path, cond_path: str | Path, config: TrainConfig,
                      out_dir: Path, index: np.ndarray | None = None,
                      extra: dict[str, Any] | None = None, progress: ProgressFn = no_progress,
                      cancel: CancelToken | None = None,
                      poll_seconds: float = 0.5, init: str | Path | None = None
                      ) -> dict[str, Any]:
    """``train_rcdm`` in ``config.processes`` processes started by torchrun.

    Nothing large is copied: the processes read the (N, H, W, 3) uint8 pixel cache and the
    (N, D) representations themselves and take the rows ``index``; the latent cache of a
    latent run stays beside the pixel cache. ``out_dir`` is their run folder, so a second
    call resumes from ``out_dir/checkpoint``. Their config, index, progress and log
    (``log.txt``) are in ``out_dir/launch/``.

    Args:
        pixels_path, cond_path: ``.npy`` files of N images and their representations.
        config: the TrainConfig; ``config.processes`` processes, ``cpus // processes``
            OpenMP threads each (unless ``OMP_NUM_THREADS`` is set).
        out_dir: the run folder (checkpoint/, previews/, model/).
        index: (n,) int rows to train on (the training split); None = all N.
        extra: provenance stored in the saved model's rcdm.json.
        progress: receives rank 0's events (forwarded every ``poll_seconds``).
        cancel: when set, the processes get SIGTERM, save the checkpoint after their current
            step and stop; ``Cancelled`` is raised.

    Returns:
        rank 0's result (see ``train_rcdm``: "final_loss", "losses", "steps_done",
        "model_dir", ..., "world_size" = ``config.processes``).

    Raises:
        Cancelled: when ``cancel`` is set.
        StudioError: the processes failed; the message ends with the tail of their log.
    """
    out_dir = Path(out_dir).resolve()  # the processes run in it: paths must not be relative
    work = out_dir / LAUNCH_DIR
    work.mkdir(parents=True, exist_ok=True)
    # 1. config, rows and provenance for every process to read
    (work / "config.json").write_text(config.to_json(), encoding="utf-8")
    args = ["--pixels", str(Path(pixels_path).resolve()), "--cond",
            str(Path(cond_path).resolve()), "--out", str(out_dir), "--config",
            str(work / "config.json")]
    if index is not None:
        np.save(work / "index.npy", np.asarray(index, dtype=np.int64))
        args += ["--index", str(work / "index.npy")]
    if extra:
        (work / "extra.json").write_text(json.dumps(extra), encoding="utf-8")
        args += ["--extra", str(work / "extra.json")]
    if init:
        args += ["--init", str(Path(init).resolve())]
    # 2. torchrun; 3. rank 0's result
    result = run_processes(MODULE, args, config.processes, out_dir,
                           out_dir / RANKS_DIR / "rank_0.json", "training", progress, cancel,
                           poll_seconds, kept=out_dir / "checkpoint")
    (work / "index.npy").unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
