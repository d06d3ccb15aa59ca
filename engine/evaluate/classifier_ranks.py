"""One evaluation on several processes: ``train_classifier`` under torchrun / ``accelerate launch``.

Each process runs this module; ``train_classifier`` sees ``WORLD_SIZE`` and trains
data-parallel (each rank takes its slice of every global batch, DDP averages the gradients,
BatchNorm uses the whole batch's statistics); rank 0 tests, writes the checkpoint and the
result. Re-running the same command resumes from ``OUT/checkpoint.pt``, whatever the number
of processes that wrote it::

    torchrun --standalone --nproc_per_node 8 -m engine.evaluate.classifier_ranks \\
        --train-x train_x.npy --train-y train_y.npy --test-x test_x.npy --test-y test_y.npy \\
        --out runs/eval --set arch=resnet50 --set image_size=64 --set device=cuda
    accelerate launch --multi_gpu --num_processes 8 -m engine.evaluate.classifier_ranks ...

``--train-x`` / ``--test-x`` are (N, S, S, 3) uint8 ``.npy`` images, ``--train-y`` /
``--test-y`` (N,) int labels, ``--is-synthetic`` (optional) (N,) bool, True for the synthetic
rows of the training mix (see ``train_classifier``). Rank 0 writes ``OUT/result.json`` (the
dict of ``train_classifier``) and, with ``--progress FILE``, one ProgressEvent JSON per line to FILE;
every rank writes ``OUT/ranks/rank_<r>.json`` (rank, world size, weights digest) when done.

``launch_train_classifier`` is what the evaluate job stage calls when ``config.processes`` > 1:
it writes the arrays and hands them to the runtime's launcher
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

from engine.config import EvalConfig, parse_overrides
from engine.progress import CancelToken, ProgressFn, no_progress
from engine.torchrun.launcher import LAUNCH_DIR, run_processes

log = logging.getLogger("engine.evaluate.classifier_ranks")

MODULE = "engine.evaluate.classifier_ranks"
RESULT = "result.json"
ARRAYS = ("train_x", "train_y", "test_x", "test_y")


def build_config(config_file: str | None, sets: list[str]) -> EvalConfig:
    """EvalConfig defaults, then a JSON file of EvalConfig fields, then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(json.loads(Path(config_file).read_text(encoding="utf-8")))
    values.update(parse_overrides(EvalConfig, sets))
    return EvalConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train and test a classifier, one process per device")
    ap.add_argument("--train-x", required=True, help="(N, S, S, 3) uint8 .npy training mix")
    ap.add_argument("--train-y", required=True, help="(N,) int .npy labels")
    ap.add_argument("--test-x", required=True, help="(M, S, S, 3) uint8 .npy real test images")
    ap.add_argument("--test-y", required=True, help="(M,) int .npy labels")
    ap.add_argument("--out", required=True, help="run folder (checkpoint, result)")
    ap.add_argument("--is-synthetic", help="(N,) bool .npy: the synthetic rows of the mix")
    ap.add_argument("--num-classes", type=int,
                    help="C (default: the largest label + 1)")
    ap.add_argument("--config", help="JSON file of EvalConfig fields")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one EvalConfig field (JSON value), repeatable")
    ap.add_argument("--progress", help="rank 0 appends progress events (JSON lines) here")
    args = ap.parse_args(argv)
    from engine.evaluate.classifier_training import train_classifier
    from engine.torchrun.ranks import progress_writer, rank_setup, run_rank, write_json, write_rank_result

    rank, cancel = rank_setup()

    out = Path(args.out)
    progress = progress_writer(args.progress, rank)

    def body() -> dict[str, Any]:
        config = build_config(args.config, args.set)
        train_x, train_y, test_x, test_y = (
            np.load(getattr(args, name), allow_pickle=False) for name in ARRAYS)
        num_classes = args.num_classes or int(max(train_y.max(initial=0),
                                                  test_y.max(initial=0))) + 1
        is_synthetic = (np.load(args.is_synthetic, allow_pickle=False)
                        if args.is_synthetic else None)
        return train_classifier(train_x, train_y, test_x, test_y, num_classes, config,
                                out_dir=out, progress=progress, cancel=cancel,
                                is_synthetic=is_synthetic)

    code, result = run_rank(body)
    if code:
        return code
    if result["rank"] == 0:
        write_json(out / RESULT, result)
    write_rank_result(out, result["rank"],
                      {k: result[k] for k in ("rank", "world_size") if k in result}
                      | {"weights_digest": result.get("weights_digest"),
                         "train_loss": result["curves"]["train_loss"]})
    return 0


def launch_train_classifier(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                            test_y: np.ndarray, num_classes: int, config: EvalConfig,
                            out_dir: Path, progress: ProgressFn = no_progress,
                            cancel: CancelToken | None = None,
                            poll_seconds: float = 0.5,
                            is_synthetic: np.ndarray | None = None) -> dict[str, Any]:
    """``train_classifier`` in ``config.processes`` processes started by torchrun.

    The arrays are written to ``out_dir/launch/`` (removed after success), the processes
    share ``out_dir`` as their run folder (so a second call resumes from its checkpoint,
    also one written by a single process), their output goes to ``out_dir/launch/log.txt``.

    Args:
        train_x, train_y, test_x, test_y, num_classes, config, is_synthetic: as for
            ``train_classifier``.
        out_dir: the run folder.
        progress: receives rank 0's events (forwarded every ``poll_seconds``).
        cancel: when set, the processes get SIGTERM, stop after their current step and
            ``Cancelled`` is raised (the last end-of-epoch checkpoint is kept).

    Returns:
        rank 0's result (see ``train_classifier``), with ``world_size`` = ``config.processes``.

    Raises:
        Cancelled: when ``cancel`` is set.
        StudioError: the processes failed; the message ends with the tail of their log.
    """
    out_dir = Path(out_dir).resolve()  # the processes run in it: paths must not be relative
    work = out_dir / LAUNCH_DIR
    work.mkdir(parents=True, exist_ok=True)
    # 1. the arrays and the config, for every process to read
    arrays = dict(zip(ARRAYS, (np.asarray(train_x, np.uint8), np.asarray(train_y, np.int64),
                               np.asarray(test_x, np.uint8), np.asarray(test_y, np.int64))))
    if is_synthetic is not None:
        arrays["is_synthetic"] = np.asarray(is_synthetic)
    for name, value in arrays.items():
        np.save(work / f"{name}.npy", value)
    (work / "config.json").write_text(config.to_json(), encoding="utf-8")
    args = [*(a for name in ARRAYS for a in (f"--{name.replace('_', '-')}",
                                             str(work / f"{name}.npy"))),
            "--out", str(out_dir), "--num-classes", str(num_classes),
            "--config", str(work / "config.json"),
            *(["--is-synthetic", str(work / "is_synthetic.npy")] if is_synthetic is not None
              else [])]
    # 2. torchrun; 3. rank 0's result
    result = run_processes(MODULE, args, config.processes, out_dir, out_dir / RESULT,
                           "evaluation", progress, cancel, poll_seconds, kept=out_dir)
    for name in arrays:
        (work / f"{name}.npy").unlink(missing_ok=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
