"""Seeded variations of real images: sample an RCDM on their representations, write PNGs.

Variation ``v`` of source ``j`` is sample ``idx = j * variations + v`` with seed
``config.seed + idx``; it is written to ``out_dir/images/<label:04d>/<idx:07d>.png`` with its
provenance in PNG text chunks (``rcdm:seed``, ``rcdm:source``, ``rcdm:model``,
``rcdm:sampler``, ``rcdm:steps``, ``rcdm:guidance``, ``rcdm:class``). Each PNG is written
atomically, so a rerun after a crash or a cancel skips the files already there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm.model import load_rcdm
from engine.rcdm.sample import sample_images

log = logging.getLogger(__name__)

COLUMNS = ["idx", "path", "source_image_id", "label", "class_name", "seed", "sampler", "steps",
           "guidance"]


def png_metadata(row: dict, model_id: str) -> dict[str, str]:
    """The text chunks written into a generated PNG."""
    return {
        "rcdm:seed": str(row["seed"]),
        "rcdm:source": str(row["source_image_id"]),
        "rcdm:model": model_id,
        "rcdm:sampler": str(row["sampler"]),
        "rcdm:steps": str(row["steps"]),
        "rcdm:guidance": repr(float(row["guidance"])),
        "rcdm:class": str(row["class_name"]),
    }


def write_png_atomic(path: Path, image: np.ndarray, text: dict[str, str]) -> None:
    """(H, W, 3) uint8 -> PNG with text chunks, via a temp file and ``os.replace``."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        Image.fromarray(image).save(f, format="PNG", pnginfo=info)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _already_written(path: Path, expected: dict[str, str]) -> bool:
    """True when ``path`` is a complete PNG written for this very sample."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as img:
            text = dict(getattr(img, "text", {}))
            img.load()  # decodes the whole file: a truncated PNG raises here
    except (OSError, SyntaxError, ValueError):
        return False
    return all(text.get(k) == v for k, v in expected.items())


def generate_variations(model_dir: Path, source_cond: np.ndarray, source_ids: list[str],
                        labels: np.ndarray, class_names: list[str], config: GenerateConfig,
                        out_dir: Path, model_id: str = "", progress: ProgressFn = no_progress,
                        cancel: CancelToken | None = None) -> pd.DataFrame:
    """Write ``config.variations`` seeded variations of every source image.

    Args:
        model_dir: a folder written by ``save_rcdm`` (e.g. ``train_rcdm``'s ``model_dir``).
        source_cond: (M, D) float32 representations of the source images.
        source_ids: M image ids (stored as ``rcdm:source``).
        labels: (M,) integer class indices into ``class_names``.
        class_names: the dataset's class names.
        config: sampler, steps, guidance, seed, batch_size, device.
        out_dir: the generation folder; images go to ``out_dir/images``.
        model_id: stored as ``rcdm:model``.

    Returns:
        One row per sample (M * variations rows, sorted by idx) with the columns
        idx, path (absolute), source_image_id, label, class_name, seed, sampler, steps,
        guidance — files skipped because they already existed included.
    """
    source_cond = np.asarray(source_cond, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    m = len(source_cond)
    if source_cond.ndim != 2:
        raise InvalidConfigError(f"source_cond must be (M, D), got shape {source_cond.shape}")
    if len(source_ids) != m or len(labels) != m:
        raise DatasetError(f"got {m} representations, {len(source_ids)} source ids and "
                           f"{len(labels)} labels; they must match")
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if len(bad):
        raise DatasetError(f"label {int(bad[0])} is not an index into {len(class_names)} classes")
    out_dir = Path(out_dir).resolve()
    model, _, _ = load_rcdm(Path(model_dir), device=config.device)
    if source_cond.shape[1] != model.cond_dim:
        raise InvalidConfigError(f"source_cond has D={source_cond.shape[1]}, the model at "
                                 f"{model_dir} was trained with D={model.cond_dim}")

    # 1. the full plan: one row per (source j, variation v)
    v = config.variations
    idx = np.arange(m * v, dtype=np.int64)
    src = idx // v
    rows = pd.DataFrame({
        "idx": idx,
        "path": [str(out_dir / "images" / f"{labels[j]:04d}" / f"{i:07d}.png")
                 for i, j in zip(idx, src)],
        "source_image_id": [str(source_ids[j]) for j in src],
        "label": labels[src],
        "class_name": [str(class_names[labels[j]]) for j in src],
        "seed": config.seed + idx,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance": float(config.guidance),
    })[COLUMNS]
    records = rows.to_dict("records")
    texts = [png_metadata(r, model_id) for r in records]

    # 2. skip what a previous run already wrote
    todo = np.array([i for i, r in enumerate(records)
                     if not _already_written(Path(r["path"]), texts[i])], dtype=np.int64)
    log.info("generating %d of %d images (%d already written)", len(todo), len(rows),
             len(rows) - len(todo))

    # 3. sample batch by batch and write each batch before the next one
    total, done = len(rows), len(rows) - len(todo)
    progress(ProgressEvent(stage="generate", step=done, total=total))
    for start in range(0, len(todo), config.batch_size):
        part = todo[start:start + config.batch_size]
        images = sample_images(model, source_cond[src[part]], rows["seed"].to_numpy()[part],
                               config, cancel=cancel)  # (b, H, W, 3) uint8
        for i, image in zip(part, images):
            write_png_atomic(Path(records[i]["path"]), image, texts[i])
        done += len(part)
        progress(ProgressEvent(stage="generate", step=done, total=total,
                               message=f"{done}/{total} images"))
        if cancel is not None:
            cancel.raise_if_cancelled()
    return rows
