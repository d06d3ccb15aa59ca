"""Generate images from a ConditionPlan with an RCDM and write them as image files.

Sample ``idx = j * variations + v`` is variation ``v`` of the plan's representation ``j``,
with seed ``config.seed + idx``; it is written to ``out_dir/images/<label:04d>/<idx:07d>.png``
(``.webp`` / ``.jpg`` with ``config.image_format``, at ``config.quality``: see
``engine.image_formats``) with its provenance in its metadata (PNG text chunks; WebP and JPEG
hold the same keys as JSON in EXIF): ``rcdm:seed``, ``rcdm:source``, ``rcdm:model``,
``rcdm:sampler``, ``rcdm:steps``, ``rcdm:guidance``, ``rcdm:class``, and for the modes other
than variations ``rcdm:mode``, ``rcdm:partner``, ``rcdm:weight``; for a perturbed plan
``rcdm:perturb`` (λ), ``rcdm:noise_seed`` and ``rcdm:perturb_distance``, the L2 distance
between the plan's representation and the perturbed one the image is drawn from, 6
significant digits; engine.rcdm.conditions says how the noise is drawn). An edit adds
``rcdm:direction`` ("A:B") and ``rcdm:strength`` (λ); a source file outside the dataset
(source id ``sha256:<hex>``) adds ``rcdm:source_name``, its file name. Each file is written
atomically, so a rerun after a crash or a cancel skips the files already there. A subset
of the indices (a shard) can be generated alone: every image depends only on its own row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from engine.config import GenerateConfig
from engine.errors import DatasetError, InvalidConfigError
from engine.image_formats import read_metadata, suffix, write_image_atomic
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.rcdm.conditions import ConditionPlan, build_plan
from engine.rcdm.model import load_rcdm
from engine.rcdm.sample import sample_images

log = logging.getLogger(__name__)

COLUMNS = ["idx", "path", "source_image_id", "label", "class_name", "seed", "sampler", "steps",
           "guidance"]
# provenance beyond the Sample table's columns: kept in samples.parquet and the file's metadata
# perturb: λ (0 = none); noise_seed: the seed of the perturbation noise (-1 = none);
# perturb_distance: L2 distance between the plan's representation and the perturbed one
PLAN_COLUMNS = ["cond_index", "mode", "partner_image_id", "weight", "perturb", "noise_seed",
                "perturb_distance"]


def png_metadata(row: dict, model_id: str) -> dict[str, str]:
    """The metadata written into a generated image (PNG text chunks, or EXIF JSON)."""
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
        **({} if not float(row.get("perturb", 0.0)) else {
            "rcdm:perturb": repr(float(row["perturb"])),
            "rcdm:noise_seed": str(row["noise_seed"]),
            "rcdm:perturb_distance": f"{float(row['perturb_distance']):.6g}",
        }),
    }


def _already_written(path: Path, expected: dict[str, str]) -> bool:
    """True when ``path`` is a complete image written for this very sample."""
    if not path.is_file():
        return False
    try:
        with Image.open(path) as img:
            text = read_metadata(img)
            img.load()  # decodes the whole file: a truncated file raises here
    except (OSError, SyntaxError, ValueError):
        return False
    return all(text.get(k) == v for k, v in expected.items())


def sample_table(plan: ConditionPlan, class_names: list[str], config: GenerateConfig,
                 out_dir: Path, subset: np.ndarray | None = None) -> pd.DataFrame:
    """The samples of a plan: ``len(plan) * config.variations`` rows (or those of
    ``subset``, sorted sample indices) sorted by idx.

    Columns: ``COLUMNS`` (path absolute under ``out_dir/images``, its extension
    ``config.image_format``'s) then ``PLAN_COLUMNS``.
    """
    labels = plan.labels
    bad = labels[(labels < 0) | (labels >= len(class_names))]
    if len(bad):
        raise DatasetError(f"label {int(bad[0])} is not an index into {len(class_names)} classes")
    out_dir = Path(out_dir).resolve()
    v = config.variations
    n = len(plan) * v
    idx = np.arange(n, dtype=np.int64)
    if subset is not None:
        subset = np.asarray(subset, dtype=np.int64)
        if len(subset) and (subset.min() < 0 or subset.max() >= n):
            raise InvalidConfigError(f"subset indices must be in [0, {n}), got "
                                     f"[{subset.min()}, {subset.max()}]")
        idx = np.unique(subset)
    src = idx // v  # the plan's representation j of each sample
    seeds = config.seed + idx
    perturbed = plan.perturb > 0
    ext = suffix(config.image_format)
    return pd.DataFrame({
        "idx": idx,
        "path": [str(out_dir / "images" / f"{labels[j]:04d}" / f"{i:07d}{ext}")
                 for i, j in zip(idx, src)],
        "source_image_id": [plan.source_ids[j] for j in src],
        "label": labels[src],
        "class_name": [str(class_names[labels[j]]) for j in src],
        "seed": seeds,
        "sampler": config.sampler,
        "steps": config.steps,
        "guidance": float(config.guidance),
        "cond_index": src,
        "mode": plan.mode,
        "partner_image_id": [plan.partner_ids[j] for j in src],
        "weight": plan.weights[src].astype(np.float64),
        "perturb": float(plan.perturb),
        "noise_seed": seeds if perturbed else np.full(len(idx), -1, dtype=np.int64),
        "perturb_distance": plan.perturbation_distances(src, seeds),
    })[COLUMNS + PLAN_COLUMNS]


def generate_plan(model_dir: Path, plan: ConditionPlan, class_names: list[str],
                  config: GenerateConfig, out_dir: Path, model_id: str = "",
                  subset: np.ndarray | None = None, progress: ProgressFn = no_progress,
                  cancel: CancelToken | None = None,
                  source_names: dict[str, str] | None = None,
                  invert_pixels: Callable[[list[str], int], np.ndarray] | None = None,
                  invert_cond: np.ndarray | None = None) -> pd.DataFrame:
    """Write ``config.variations`` seeded images of every representation of ``plan``.

    Args:
        model_dir: a folder written by ``save_rcdm`` (e.g. ``train_rcdm``'s ``model_dir``).
        plan: K representations (engine.rcdm.conditions) with labels and provenance.
        class_names: the dataset's class names (labels index them).
        config: sampler, steps, guidance, seed, variations, batch_size, device; its
            ``perturb`` must be the plan's (``build_plan`` perturbs the plan).
        out_dir: the generation folder; images go to ``out_dir/images``.
        model_id: stored as ``rcdm:model``.
        subset: sorted sample indices to generate (a shard); None = all of them.
        source_names: source id -> file name, for sources outside the dataset
            (``rcdm:source_name``).
        invert_pixels, invert_cond: with ``config.invert``, (source ids, size) -> their
            images (b, size, size, 3) uint8 as the model sees them, and (K, D) the source's
            own representation of each plan row: each sample is the
            source inverted under that (seeded by ``config.seed`` + its variation index,
            so a strip shares one inversion) and regenerated under the plan's
            representation (``engine.rcdm.inversion``).

    Returns:
        One row per generated sample (all of them, or those of ``subset``), sorted by idx,
        with ``COLUMNS + PLAN_COLUMNS`` — files skipped because they already existed
        included.
    """
    if float(config.perturb) != float(plan.perturb):
        raise InvalidConfigError(f"the config asks for perturbation λ = {config.perturb:g}, the "
                                 f"plan is perturbed by λ = {plan.perturb:g}; build the plan "
                                 f"with this config (engine.rcdm.conditions.build_plan)")
    rows = sample_table(plan, class_names, config, out_dir, subset)
    model, _, _ = load_rcdm(Path(model_dir), device=config.device)
    if plan.cond.shape[1] != model.cond_dim:
        raise InvalidConfigError(f"the representations have D={plan.cond.shape[1]}, the "
                                 f"model at {model_dir} was trained with D={model.cond_dim}")
    records = rows.to_dict("records")
    texts = [png_metadata(r, model_id) for r in records]
    for r, text in zip(records, texts):
        if r["source_image_id"] in (source_names or {}):
            text["rcdm:source_name"] = str(source_names[r["source_image_id"]])
        if r["mode"] == "edit":
            text["rcdm:direction"] = config.direction
            text["rcdm:strength"] = repr(float(r["weight"]))

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
        # the representations the samples are drawn from: the plan's, perturbed per seed
        # when the plan is (guidance then conditions on these)
        cond = plan.sample_conditions(cond_index[part], seeds[part])  # (b, D) float32
        if config.invert:
            images = _inverted(model, [records[i] for i in part], cond, invert_pixels,
                               invert_cond, config)
        else:
            images = sample_images(model, cond, seeds[part], config,
                                   cancel=cancel)  # (b, H, W, C) uint8, C 1 or 3
        for i, image in zip(part, images):
            write_image_atomic(Path(records[i]["path"]), image, config.image_format,
                               config.quality, texts[i])
        done += len(part)
        progress(ProgressEvent(stage="generate", step=done, total=total,
                               message=f"{done}/{total} images"))
        if cancel is not None:
            cancel.raise_if_cancelled()
    return rows


def _inverted(model, rows: list[dict], cond: np.ndarray,
              pixels_of: Callable[[list[str], int], np.ndarray] | None,
              own: np.ndarray | None, config: GenerateConfig) -> np.ndarray:
    """The samples of ``rows``: each row's source image inverted under its own
    representation, regenerated under ``cond`` (b, D). (b, H, W, C) uint8 (C: the model's
    channels; colour sources of a greyscale model are converted to L)."""
    from engine.rcdm import inversion
    from engine.rcdm.latent import image_shape

    if own is None or pixels_of is None:
        raise InvalidConfigError("an inverted generation needs its source images and their "
                                 "representations")
    model.eval()
    pixels = pixels_of([r["source_image_id"] for r in rows], image_shape(model)[0])
    x0 = inversion.to_model_space(model, pixels)
    seeds = np.array([config.seed + int(r["idx"]) % config.variations for r in rows])
    inv = inversion.invert(model, x0, own[[int(r["cond_index"]) for r in rows]], seeds,
                           config.steps, config.guidance)
    return inversion.regenerate(model, inv, cond, config.guidance)


def generate_variations(model_dir: Path, source_cond: np.ndarray, source_ids: list[str],
                        labels: np.ndarray, class_names: list[str], config: GenerateConfig,
                        out_dir: Path, model_id: str = "", progress: ProgressFn = no_progress,
                        cancel: CancelToken | None = None) -> pd.DataFrame:
    """Write ``config.variations`` seeded variations of every source image.

    Args:
        source_cond: (M, D) float32 representations of the source images.
        source_ids: M image ids (stored as ``rcdm:source``).
        labels: (M,) integer class indices into ``class_names``.
        The others as in ``generate_plan``; with ``config.perturb > 0`` the noise is
        relative to the per-dimension std of ``source_cond`` (at least two sources).

    Returns:
        One row per sample (M * variations rows, sorted by idx) with the columns
        idx, path (absolute), source_image_id, label, class_name, seed, sampler, steps,
        guidance — files skipped because they already existed included.
    """
    plan = build_plan(config.replace(mode="variations"), source_cond, source_ids, labels)
    rows = generate_plan(model_dir, plan, class_names, config, out_dir, model_id,
                         progress=progress, cancel=cancel)
    return rows[COLUMNS]
