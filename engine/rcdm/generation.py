"""Generate images from a ConditionPlan with an RCDM and write them as PNGs.

Sample ``idx = j * variations + v`` is variation ``v`` of the plan's representation ``j``,
with seed ``config.seed + idx``; it is written to ``out_dir/images/<label:04d>/<idx:07d>.png``
with its provenance in PNG text chunks (``rcdm:seed``, ``rcdm:source``, ``rcdm:model``,
``rcdm:sampler``, ``rcdm:steps``, ``rcdm:guidance``, ``rcdm:class``, and for the modes other
than variations ``rcdm:mode``, ``rcdm:partner``, ``rcdm:weight``). Each PNG is written
atomically, so a rerun after a crash or a cancel skips the files already there. A subset
of the indices (a shard) can be generated alone: every image depends only on its own row.
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
from engine.rcdm.conditions import ConditionPlan, variations_plan
from engine.rcdm.model import load_rcdm
from engine.rcdm.sample import sample_images

log = logging.getLogger(__name__)

COLUMNS = ["idx", "path", "source_image_id", "label", "class_name", "seed", "sampler", "steps",
           "guidance"]
# provenance beyond the Sample table's columns: kept in samples.parquet and the PNG text
PLAN_COLUMNS = ["cond_index", "mode", "partner_image_id", "weight"]


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
        **({} if row.get("mode", "variations") == "variations" else {
            "rcdm:mode": str(row["mode"]),
            "rcdm:partner": str(row["partner_image_id"]),
            "rcdm:weight": repr(float(row["weight"])),
        }),
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


def sample_table(plan: ConditionPlan, class_names: list[str], config: GenerateConfig,
                 out_dir: Path) -> pd.DataFrame:
    """Every sample of a plan: ``len(plan) * config.variations`` rows sorted by idx.

    Columns: ``COLUMNS`` (path absolute under ``out_dir/images``) then ``PLAN_COLUMNS``.
    """
    labels = plan.labels
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if len(bad):
        raise DatasetError(f"label {int(bad[0])} is not an index into {len(class_names)} classes")
    out_dir = Path(out_dir).resolve()
    v = config.variations
    idx = np.arange(len(plan) * v, dtype=np.int64)
    src = idx // v  # the plan's representation j of each sample
    return pd.DataFrame({
        "idx": idx,
        "path": [str(out_dir / "images" / f"{labels[j]:04d}" / f"{i:07d}.png")
                 for i, j in zip(idx, src)],
        "source_image_id": [plan.source_ids[j] for j in src],
        "label": labels[src],
        "class_name": [str(class_names[labels[j]]) for j in src],
        "seed": config.seed + idx,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance": float(config.guidance),
        "cond_index": src,
        "mode": plan.mode,
        "partner_image_id": [plan.partner_ids[j] for j in src],
        "weight": plan.weights[src].astype(np.float64),
    })[COLUMNS + PLAN_COLUMNS]


def generate_plan(model_dir: Path, plan: ConditionPlan, class_names: list[str],
                  config: GenerateConfig, out_dir: Path, model_id: str = "",
                  subset: np.ndarray | None = None, progress: ProgressFn = no_progress,
                  cancel: CancelToken | None = None) -> pd.DataFrame:
    """Write ``config.variations`` seeded images of every representation of ``plan``.

    Args:
        model_dir: a folder written by ``save_rcdm`` (e.g. ``train_rcdm``'s ``model_dir``).
        plan: K representations (engine.rcdm.conditions) with labels and provenance.
        class_names: the dataset's class names (labels index them).
        config: sampler, steps, guidance, seed, variations, batch_size, device.
        out_dir: the generation folder; images go to ``out_dir/images``.
        model_id: stored as ``rcdm:model``.
        subset: sorted sample indices to generate (a shard); None = all of them.

    Returns:
        One row per generated sample (all of them, or those of ``subset``), sorted by idx,
        with ``COLUMNS + PLAN_COLUMNS`` — files skipped because they already existed
        included.
    """
    rows = sample_table(plan, class_names, config, out_dir)
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)
        if len(subset) and (subset.min() < 0 or subset.max() >= len(rows)):
            raise InvalidConfigError(f"subset indices must be in [0, {len(rows)}), got "
                                     f"[{subset.min()}, {subset.max()}]")
        rows = rows.iloc[np.unique(subset)].reset_index(drop=True)
    model, _, _ = load_rcdm(Path(model_dir), device=config.device)
    if plan.cond.shape[1] != model.cond_dim:
        raise InvalidConfigError(f"the representations have D={plan.cond.shape[1]}, the "
                                 f"model at {model_dir} was trained with D={model.cond_dim}")
    records = rows.to_dict("records")
    texts = [png_metadata(r, model_id) for r in records]

    # 1. skip what a previous run already wrote
    todo = np.array([i for i, r in enumerate(records)
                     if not _already_written(Path(r["path"]), texts[i])], dtype=np.int64)
    log.info("generating %d of %d images (%d already written)", len(todo), len(rows),
             len(rows) - len(todo))

    # 2. sample batch by batch and write each batch before the next one
    total, done = len(rows), len(rows) - len(todo)
    cond_index, seeds = rows["cond_index"].to_numpy(), rows["seed"].to_numpy()
    progress(ProgressEvent(stage="generate", step=done, total=total))
    for start in range(0, len(todo), config.batch_size):
        part = todo[start:start + config.batch_size]
        images = sample_images(model, plan.cond[cond_index[part]], seeds[part], config,
                               cancel=cancel)  # (b, H, W, 3) uint8
        for i, image in zip(part, images):
            write_png_atomic(Path(records[i]["path"]), image, texts[i])
        done += len(part)
        progress(ProgressEvent(stage="generate", step=done, total=total,
                               message=f"{done}/{total} images"))
        if cancel is not None:
            cancel.raise_if_cancelled()
    return rows


def generate_variations(model_dir: Path, source_cond: np.ndarray, source_ids: list[str],
                        labels: np.ndarray, class_names: list[str], config: GenerateConfig,
                        out_dir: Path, model_id: str = "", progress: ProgressFn = no_progress,
                        cancel: CancelToken | None = None) -> pd.DataFrame:
    """Write ``config.variations`` seeded variations of every source image.

    Args:
        source_cond: (M, D) float32 representations of the source images.
        source_ids: M image ids (stored as ``rcdm:source``).
        labels: (M,) integer class indices into ``class_names``.
        The others as in ``generate_plan``.

    Returns:
        One row per sample (M * variations rows, sorted by idx) with the columns
        idx, path (absolute), source_image_id, label, class_name, seed, sampler, steps,
        guidance — files skipped because they already existed included.
    """
    plan = variations_plan(source_cond, source_ids, labels)
    rows = generate_plan(model_dir, plan, class_names, config, out_dir, model_id,
                         progress=progress, cancel=cancel)
    return rows[COLUMNS]
