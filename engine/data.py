"""Image datasets: validation, ImageFolder import, stratified splits, pixel caches, the demo.

An imported dataset lives in ``ASSETS/datasets/<dataset_id>/``::

    images/<label:04d>/<idx:06d>.png   every valid image, RGB, longer side <= max_side
    thumbs/<label:04d>/<idx:06d>.png   a thumbnail per image (longer side thumbnail_size)
    pixels_<size>.npy                  uint8 (N, size, size, 3) caches made by pixel_cache
                                       (in the workers of the stages that need them)

``idx`` runs over the whole dataset (0..N-1, classes in label order, files sorted by path)
and is the row of the image in every array computed from the dataset (pixels, embeddings).

Import is all-or-nothing: images are written into a ``.partial`` folder, renamed into place
when every file has been read, and the dataset and its image rows are inserted in one
transaction; any error or cancel removes the folder and leaves no row. The pieces here
(``check_folder``, ``scan_image_folder``, ``write_dataset_files``, ``dataset_row``) touch no
database; the ``import`` job kind (``engine.stages.import_stage``) runs them in a worker: every
import (the command line, the studio, the demo) goes through that job.

Splits (``split_images``): ``train`` / ``val`` / ``test`` / ``unused``. The test split is fixed
by the folder, ``test_fraction`` and ``split_seed`` alone; validation is carved from the rest;
``train_per_class`` keeps N training images per class and marks the others ``unused`` (kept
as rows, read by no stage).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import engine.paths
from engine.config import ImportConfig
from engine.errors import DatasetError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import Dataset, Project, dumps, new_id

log = logging.getLogger(__name__)

DEFAULT_IMPORT = ImportConfig()
DEMO_SOURCE = "sklearn.datasets.load_digits (bundled, 8x8 handwritten digits)"
_PNG_COMPRESS_LEVEL = 4  # a fair trade between import speed and file size
_REPORT_EVERY_S = 0.1  # progress reports at most ~10 per second


# ---------------------------------------------------------------------------- demo dataset


def write_demo_dataset(folder: Path) -> Path:
    """Write scikit-learn's bundled handwritten digits as an ImageFolder.

    1,797 grayscale 8x8 images in 10 classes (``folder/"0"/00000.png`` ...), no download.
    Values 0..16 are scaled to 0..255 keeping sklearn's convention: a bright stroke on black.
    The file name is the image's index in ``load_digits()``.

    Returns:
        ``folder``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # (1797, 8, 8) float 0..16 -> uint8 0..255
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    folder = Path(folder)
    for label in np.unique(digits.target):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, digits.target)):
        Image.fromarray(img).save(folder / str(int(label)) / f"{i:05d}.png")
    return folder


# ---------------------------------------------------------------------------- one image


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB.

    Transparent images are composited over white. 16- and 32-bit integer images ("I;16*",
    "I") are read as 16-bit intensities and scaled by 255/65535 (Pillow's own conversion
    clips instead of scaling); float images ("F") are taken as 0..1 when their maximum is
    <= 1, else as 0..255.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(img)
        if arr.ndim == 3:  # e.g. 16-bit RGB decoded by a plugin as a 3-channel array
            arr = arr[..., :3]
        arr = arr.astype(np.float64)
        if mode == "F":
            finite = arr[np.isfinite(arr)]
            top = float(finite.max()) if finite.size else 0.0
            arr = np.nan_to_num(arr) * (255.0 if top <= 1.0 else 1.0)
        else:
            arr = arr * (255.0 / 65535.0)
        gray = Image.fromarray(np.round(arr).clip(0, 255).astype(np.uint8))
        return gray.convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # "1", "L", "P", "CMYK" (Adobe-inverted JPEGs are un-inverted by Pillow), "YCbCr", "LAB", ...
    return img.convert("RGB")


def _fit_side(img: Image.Image, max_side: int) -> Image.Image:
    """Downscale (LANCZOS) so that the longer side is <= ``max_side``; never upscale."""
    w, h = img.size
    longer = max(w, h)
    if longer <= max_side:
        return img
    scale = max_side / longer
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.Resampling.LANCZOS)


# Bounded memory for big images: an image whose longer side exceeds this many times
# ``max_side`` is first decoded at a reduced scale (JPEG's DCT scaling, ``draft``) and/or
# box-reduced by a whole factor (``Image.reduce``), leaving at least this margin, before the
# LANCZOS resize to ``max_side``; Pillow's ``reducing_gap`` uses the same margin ("in most
# cases indistinguishable" from a plain resize). Images up to 3 x max_side take today's path.
_REDUCING_GAP = 3.0
_STRIP_PIXELS = 1_000_000  # pixels per strip converted at once when reducing (~4 MB in RGB)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {  # as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _draft_for(img: Image.Image, max_side: int) -> None:
    """Ask the decoder for a reduced scale (JPEG: 1/2, 1/4, 1/8 by DCT scaling), keeping the
    longer side >= ``_REDUCING_GAP * max_side``. Call before ``load``; other formats ignore it."""
    w, h = img.size
    keep = _REDUCING_GAP * max_side / max(w, h)
    if keep < 0.5:  # a scale of 1/2 at least would still leave the margin
        img.draft(None, (max(1, math.ceil(w * keep)), max(1, math.ceil(h * keep))))


def _reduced_rgb(img: Image.Image, max_side: int) -> Image.Image:
    """A loaded image of any mode -> RGB (``_to_rgb``), box-reduced by the largest whole factor
    that keeps the longer side >= ``_REDUCING_GAP * max_side`` (factor 1: ``_to_rgb(img)``).

    When reducing, the conversion runs strip by strip (``_STRIP_PIXELS``, rows a multiple of
    the factor), so no full-size converted copy is made: the result equals converting the
    whole image and then reducing it. Float ("F") images are converted whole (their scale
    depends on the whole image's maximum).
    """
    w, h = img.size
    factor = int(max(w, h) / max_side / _REDUCING_GAP)
    if factor <= 1:
        return _to_rgb(img)
    if img.mode == "F":
        return _to_rgb(img).reduce(factor)
    out = Image.new("RGB", (math.ceil(w / factor), math.ceil(h / factor)))
    rows = factor * max(1, _STRIP_PIXELS // (w * factor))
    for top in range(0, h, rows):
        strip = _to_rgb(img.crop((0, top, w, min(h, top + rows))))  # (rows, w) -> RGB
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _orientation(img: Image.Image, path: Path) -> int:
    """The EXIF (or XMP) orientation of an opened image, 1 when absent or unreadable."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
        return int(value) if value in _TRANSPOSE_FOR_ORIENTATION else 1
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block must not lose a good image
        log.warning("ignoring unreadable EXIF orientation of %s: %s", path, exc)
        return 1


def validate_image(path: Path, config: ImportConfig) -> tuple[Image.Image | None, str]:
    """Decode one file fully and normalise it, or say why it cannot be used.

    Refuses empty, truncated, corrupt and non-image files, and decompression bombs (more
    than ``config.max_pixels`` pixels, checked from the header before decoding). Applies the
    EXIF orientation, converts any mode to RGB (see ``_to_rgb``) and downscales so that the
    longer side is at most ``config.max_side``.

    Memory: the file is decoded once, at a reduced scale where the format allows (JPEG), and
    an image larger than ``_REDUCING_GAP * max_side`` is box-reduced right after decoding,
    its conversion done in strips; orientation, conversion and the final LANCZOS resize then
    work on the reduced image. Peak memory is about one decoded image (Pillow keeps RGB at 4
    bytes a pixel: ~350 MB for 9400x9400) plus a few tens of MB.

    Returns:
        ``(image, "")`` with an RGB image, or ``(None, reason)`` with a one-line reason.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or exc})"
    if size == 0:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own global threshold; we apply config.max_pixels below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > config.max_pixels:
                    return None, (f"decompression bomb refused: {w}x{h} = {w * h:,} pixels "
                                  f"> max_pixels {config.max_pixels:,}")
                _draft_for(img, config.max_side)
                img.load()  # decode everything now: truncation and corruption show up here
                orientation = _orientation(img, path)
                rgb = _reduced_rgb(img, config.max_side)  # a big image: no full-size copy
                if orientation != 1:
                    rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
                rgb.load()
    except Image.DecompressionBombError as exc:
        return None, f"decompression bomb refused by Pillow: {exc}"
    except Image.UnidentifiedImageError:
        return None, "not an image (unknown or unsupported format)"
    except MemoryError:
        return None, "not enough memory to decode the image"
    except Exception as exc:  # noqa: BLE001 - any decoder failure: a truncated or corrupt file
        text = str(exc).strip() or type(exc).__name__
        return None, f"corrupt or truncated image ({text})"
    return _fit_side(rgb, config.max_side), ""


def make_thumbnail(img: Image.Image, size: int) -> Image.Image:
    """A thumbnail whose longer side is ``size``.

    Larger images are downscaled (LANCZOS). Images smaller than ``size / 2`` are enlarged by
    the largest whole factor that fits, with NEAREST so small pixel art (8x8 digits) stays
    crisp; the rest are kept as they are.
    """
    w, h = img.size
    longer = max(w, h)
    if longer > size:
        scale = size / longer
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                          Image.Resampling.LANCZOS)
    factor = size // longer
    if factor >= 2:
        return img.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    return img


# ---------------------------------------------------------------------------- splits


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """A seeded train/test split that keeps class proportions.

    Each class with ``n >= 2`` images gets ``round(n * test_fraction)`` test images, clipped
    to ``[1, n - 1]``; a class with one image goes to train. Class ``c`` is shuffled with
    ``np.random.default_rng([seed, c])``, so its split depends only on the seed and its own
    images.

    Args:
        labels: int array (N,).
        test_fraction: in (0, 1).
        seed: split seed.

    Returns:
        str array (N,) of ``"train"`` / ``"test"``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be one-dimensional, got shape {labels.shape}")
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}")
    split = np.full(labels.shape[0], "train", dtype="<U5")
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = members.size
        if n < 2:
            continue
        n_test = int(min(max(round(n * test_fraction), 1), n - 1))
        rng = np.random.default_rng([int(seed), int(c)])
        split[rng.permutation(members)[:n_test]] = "test"
    return split


SPLITS = ("train", "val", "test", "unused")  # "unused": kept out by train_per_class
# a class with fewer validation or test images than this gets a warning: with 4, one image
# moves its accuracy by 25 p.p.
MIN_HELD_OUT = 5
NAMED_CLASSES = 5  # a warning names this many classes, then counts the rest


def split_images(labels: np.ndarray, config: ImportConfig) -> np.ndarray:
    """The splits of a dataset: test, then validation, then N training images per class.

    Per class ``c`` (``n`` images), each step seeded by ``[split_seed, c, step]``:

    1. test: ``stratified_split(labels, test_fraction, split_seed)`` over ALL the images, so
       the test images depend only on the folder, ``test_fraction`` and ``split_seed`` (never
       on ``val_fraction`` or ``train_per_class``): runs at N = 10, 25, 50, all compare on
       the same test images.
    2. validation: ``round(n * val_fraction)`` of the class's non-test images (at least 1
       when ``val_fraction > 0``, and always leaving one to train).
    3. training: ``train_per_class`` of what is left (all when None), drawn by a seeded
       permutation that does not depend on N, so the N = 10 images are among the N = 25
       ones; the rest become ``"unused"``.

    Args:
        labels: int array (N,).
        config: ``test_fraction``, ``val_fraction``, ``train_per_class``, ``split_seed``.

    Returns:
        str array (N,) of ``"train"`` / ``"val"`` / ``"test"`` / ``"unused"``.
    """
    labels = np.asarray(labels)
    split = stratified_split(labels, config.test_fraction, config.split_seed).astype("<U6")
    seed = int(config.split_seed)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rest = members[split[members] == "train"]  # idx order
        if config.val_fraction > 0 and rest.size >= 2:
            n_val = int(min(max(round(members.size * config.val_fraction), 1), rest.size - 1))
            order = np.random.default_rng([seed, int(c), 1]).permutation(rest)
            split[order[:n_val]] = "val"
            rest = np.sort(order[n_val:])
        if config.train_per_class is not None and rest.size > config.train_per_class:
            order = np.random.default_rng([seed, int(c), 2]).permutation(rest)
            split[order[config.train_per_class:]] = "unused"
    return split


def split_warnings(images: pd.DataFrame, config: ImportConfig) -> list[str]:
    """One sentence per kind of split too small to trust, naming its classes: fewer than
    ``MIN_HELD_OUT`` test images (or validation images, when ``val_fraction > 0``) per
    class, or fewer training images than ``train_per_class`` asked for.

    Args:
        images: one row per image with ``class_name`` and ``split`` (the Image columns).
    """
    if images.empty:
        return []
    counts = images.groupby(["class_name", "split"], sort=False).size().unstack(fill_value=0)
    short: dict[str, list[tuple[str, int]]] = {"test": [], "val": [], "train": []}
    for name, row in counts.iterrows():
        n_test, n_val, n_train = (int(row.get(k, 0)) for k in ("test", "val", "train"))
        if n_test < MIN_HELD_OUT:
            short["test"].append((str(name), n_test))
        if config.val_fraction > 0 and n_val < MIN_HELD_OUT:
            short["val"].append((str(name), n_val))
        if config.train_per_class is not None and n_train < config.train_per_class:
            short["train"].append((str(name), n_train))
    n_classes = len(counts)
    out = []
    asked = config.train_per_class
    for split, unit, many, advice in (
            ("test", "test", f"fewer than {MIN_HELD_OUT} test images", "a class's test "
             "accuracy moves in big steps; import more images or raise the test fraction"),
            ("val", "validation", f"fewer than {MIN_HELD_OUT} validation images", "choices "
             "made on validation are noisy; import more images or raise the validation "
             "fraction"),
            ("train", "training", f"fewer training images than the {asked} asked",
             "they train on what there is")):
        found = short[split]
        if len(found) == 1:
            name, n = found[0]
            limit = f"the {asked} asked" if split == "train" else MIN_HELD_OUT
            out.append(f"class {name!r} has {n} {unit} image{'' if n == 1 else 's'}, fewer "
                       f"than {limit}: {advice}")
        elif found:
            named = ", ".join(f"{name!r}: {n}" for name, n in found[:NAMED_CLASSES])
            more = f" and {len(found) - NAMED_CLASSES} more" if len(found) > NAMED_CLASSES \
                else ""
            whom = "every class has" if len(found) == n_classes else \
                f"{len(found)} of {n_classes} classes have"
            out.append(f"{whom} {many} ({named}{more}): {advice}")
    return out


# ---------------------------------------------------------------------------- import


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_files(class_dir: Path) -> list[Path]:
    """Non-hidden files under ``class_dir``, recursively, sorted by relative path.

    Symbolic links are followed, but a folder already visited (same device and inode) is not
    entered again, so link loops end.
    """
    seen: set[tuple[int, int]] = set()
    files: list[Path] = []
    for root, dirs, names in os.walk(class_dir, followlinks=True):
        st = os.stat(root)
        key = (st.st_dev, st.st_ino)
        if key in seen:
            dirs[:] = []
            continue
        seen.add(key)
        dirs[:] = sorted(d for d in dirs if not _is_hidden(d))
        for name in names:
            p = Path(root) / name
            if not _is_hidden(name) and p.is_file():
                files.append(p)
    return sorted(files, key=lambda p: p.relative_to(class_dir).as_posix())


def _list_classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def check_name(project: Project, name: str) -> str:
    """``name`` without its outer spaces; DatasetError when it is empty or a dataset of the
    project has it, InvalidConfigError when ``engine.paths.check_name`` refuses it (too long,
    a control character, a path separator, ``..``)."""
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(f"a dataset needs a non-empty name, got {name!r}")
    name = engine.paths.check_name(name, "dataset name")
    if any(d.name == name for d in project.list(Dataset)):
        raise DatasetError(f"a dataset named {name!r} already exists in {project.path.name}; "
                           f"choose another name")
    return name


def check_folder(folder: Path) -> Path:
    """The absolute ImageFolder root; raises DatasetError when it is missing or a file."""
    folder = Path(folder).expanduser().absolute()
    if not folder.exists():
        raise DatasetError(f"image folder {folder} does not exist")
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder (expected an ImageFolder root)")
    return folder


def scan_image_folder(folder: Path) -> tuple[list[str], list[list[Path]]]:
    """Class names (sorted sub-folder names) and each class's files (recursive, sorted)."""
    classes = _list_classes(folder)
    if not classes:
        raise DatasetError(f"no class sub-folders in {folder}: expected one sub-folder per "
                           f"class, e.g. {folder / 'cat' / '001.jpg'}")
    if len(classes) == 1:
        log.warning("importing %s with a single class (%r): classifiers and class "
                    "centroids need at least two", folder, classes[0])
    return classes, [_class_files(folder / c) for c in classes]


def new_dataset_id(assets: Path) -> str:
    """A dataset id whose folder (and ``.partial`` folder) does not exist in ``assets``."""
    while True:
        ident = new_id("ds")
        root = Path(assets) / "datasets" / ident
        if not root.exists() and not root.with_name(f".{ident}.partial").exists():
            return ident


def partial_root(final_root: Path) -> Path:
    """The folder an import writes into before it is renamed to ``final_root``."""
    return final_root.with_name(f".{final_root.name}.partial")


def write_dataset_files(folder: Path, work_root: Path, root_rel: str, dataset_id: str,
                        config: ImportConfig, progress: ProgressFn = no_progress,
                        cancel: CancelToken | None = None) -> dict[str, Any]:
    """Validate every file of an ImageFolder and write the images and thumbnails.

    No database: the images go to ``work_root`` (``images/<label>/<idx>.png``,
    ``thumbs/...``); the rows name them under ``root_rel``, the assets-relative folder
    ``work_root`` is renamed to once the rows are written.

    Args:
        folder: the ImageFolder root (``check_folder``).
        progress: receives ``ProgressEvent(stage="import", step=files done, total=files)``.
        cancel: polled between files.

    Returns:
        ``{"classes": [...], "skipped": [{"path", "reason"}], "images": DataFrame}`` with
        one row per valid image (Image columns, ``split`` included).

    Raises:
        DatasetError: no class sub-folder, or a class without a valid image.
        Cancelled: the token was set. The caller removes ``work_root``.
    """
    # 1. list every file, class by class
    classes, per_class = scan_image_folder(folder)
    total = sum(len(files) for files in per_class)
    rows: list[dict] = []
    skipped: list[dict[str, str]] = []
    done = 0
    last_report = 0.0
    work_root.mkdir(parents=True)
    progress(ProgressEvent(stage="import", step=0, total=total,
                           message=f"importing {total} files from {folder}"))
    # 2. validate and store each image, in label order
    for label, (class_name, files) in enumerate(zip(classes, per_class)):
        n_before = len(rows)
        skipped_before = len(skipped)
        for path in files:
            if cancel is not None:
                cancel.raise_if_cancelled()
            rel_source = path.relative_to(folder).as_posix()
            img, reason = validate_image(path, config)
            if img is None:
                skipped.append({"path": rel_source, "reason": reason})
                log.info("skipped %s: %s", rel_source, reason)
            else:
                idx = len(rows)
                sub = f"{label:04d}/{idx:06d}.png"
                image_path = work_root / "images" / sub
                thumb_path = work_root / "thumbs" / sub
                image_path.parent.mkdir(parents=True, exist_ok=True)
                thumb_path.parent.mkdir(parents=True, exist_ok=True)
                img.save(image_path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
                make_thumbnail(img, config.thumbnail_size).save(
                    thumb_path, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
                rows.append({
                    "id": f"{dataset_id}_{idx:06d}",
                    "dataset_id": dataset_id,
                    "idx": idx,
                    "path": f"{root_rel}/images/{sub}",
                    "thumb": f"{root_rel}/thumbs/{sub}",
                    "label": label,
                    "class_name": class_name,
                    "width": img.width,
                    "height": img.height,
                    "source_path": rel_source,
                })
            done += 1
            now = time.monotonic()
            if now - last_report >= _REPORT_EVERY_S or done == total:
                last_report = now
                progress(ProgressEvent(stage="import", step=done, total=total,
                                       metrics={"images": float(len(rows)),
                                                "skipped": float(len(skipped))}))
        if len(rows) == n_before:
            n_skipped = len(skipped) - skipped_before
            if n_skipped == 0:
                raise DatasetError(f"class {class_name!r} has no image: "
                                   f"{folder / class_name} holds no file")
            first = skipped[skipped_before]
            raise DatasetError(
                f"class {class_name!r} has no valid image: all {n_skipped} file(s) in "
                f"{folder / class_name} were skipped, the first ({first['path']}) "
                f"because: {first['reason']}")

    # 3. the split
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    images = pd.DataFrame(rows)
    images["split"] = split_images(labels, config)
    images["idx"] = images["idx"].astype(np.int64)
    images["label"] = images["label"].astype(np.int64)
    warned = split_warnings(images, config)
    for line in warned:
        log.warning("%s", line)
    return {"classes": classes, "skipped": skipped, "images": images, "warnings": warned}


def dataset_row(dataset_id: str, name: str, source: str, root_rel: str,
                written: dict[str, Any], config: ImportConfig, job_id: str = "") -> Dataset:
    """The Dataset row of files written by ``write_dataset_files`` (``written``)."""
    split = written["images"]["split"].to_numpy()
    return Dataset(id=dataset_id, name=name, source=source, root=root_rel,
                   num_classes=len(written["classes"]), num_images=len(split),
                   num_train=int((split == "train").sum()), num_val=int((split == "val").sum()),
                   num_test=int((split == "test").sum()),
                   classes_json=dumps(written["classes"]), skipped_json=dumps(written["skipped"]),
                   config_json=config.to_json(), job_id=job_id)


# ---------------------------------------------------------------------------- pixels


def _square(img: Image.Image, size: int) -> Image.Image:
    """Center-crop the largest square, then resize to ``size x size``.

    LANCZOS when shrinking, BICUBIC when enlarging.
    """
    img = img.convert("RGB") if img.mode != "RGB" else img
    w, h = img.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.width == size:
        return img
    method = Image.Resampling.LANCZOS if img.width > size else Image.Resampling.BICUBIC
    return img.resize((size, size), method)


def resize_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a batch of images to ``size x size`` (same rules as ``dataset_pixels``).

    Args:
        pixels: uint8 (N, H, W, 3).
        size: output side.

    Returns:
        uint8 (N, size, size, 3); the input itself when it is already that size.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DatasetError(f"pixels must have shape (N, H, W, 3), got {pixels.shape}")
    if pixels.shape[1] == size and pixels.shape[2] == size:
        return pixels
    out = np.empty((pixels.shape[0], size, size, 3), dtype=np.uint8)
    for i in range(pixels.shape[0]):
        out[i] = np.asarray(_square(Image.fromarray(np.ascontiguousarray(pixels[i])), size))
    return out


def load_pixels(paths: list[Path], size: int) -> np.ndarray:
    """Read image files (e.g. generated PNGs) as uint8 (N, size, size, 3), in order."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        out[i] = file_pixels(path, size)
    return out


def file_pixels(path: Path | str, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3): RGB, centre square, resized (what
    ``load_pixels`` makes of it, one file at a time: a streamed dataset's item)."""
    with Image.open(path) as img:
        img.load()
        return np.asarray(_square(_to_rgb(img), size))


def image_pixels(img: Image.Image, size: int) -> np.ndarray:
    """One image (any mode, e.g. from ``validate_image``) as uint8 (size, size, 3): RGB,
    centre square, resized: the pixels an encoder sees of a dataset image."""
    return np.asarray(_square(_to_rgb(img), size))


def pixels_cache_path(project: Project, dataset: Dataset, size: int) -> Path:
    """Where the dataset's pixels at ``size`` are cached (``pixel_cache`` builds it)."""
    return project.abs(dataset.root) / f"pixels_{size}.npy"


def dataset_pixels(project: Project, dataset: Dataset, size: int,
                   progress: ProgressFn = no_progress,
                   cancel: CancelToken | None = None) -> np.ndarray:
    """All images of a dataset, in ``idx`` order, as uint8 (N, size, size, 3).

    ``size`` must be >= 1. Decoded once and cached (``pixel_cache``); later calls return the
    cache memory-mapped read-only. This decodes in the calling thread: stages name the cache
    and their workers build it (``pixel_cache``), never the owner.
    """
    cache = pixels_cache_path(project, dataset, size)
    if cache.exists():
        arr = np.load(cache, mmap_mode="r", allow_pickle=False)
        if arr.shape == (dataset.num_images, size, size, 3) and arr.dtype == np.uint8:
            return arr
        del arr
    images = project.images(dataset.id)
    if len(images) != dataset.num_images:
        raise DatasetError(f"dataset {dataset.name!r} lists {dataset.num_images} images but "
                           f"the project holds {len(images)} rows for it")
    return pixel_cache([project.abs(rel) for rel in images["path"]], cache, size, progress,
                       cancel)


def pixel_cache(paths: list[Path] | list[str], cache: Path, size: int,
                progress: ProgressFn = no_progress,
                cancel: CancelToken | None = None, workers: int = 0) -> np.ndarray:
    """The images ``paths`` (a dataset's, in ``idx`` order) as uint8 (N, size, size, 3),
    decoded once into ``cache`` (a ``.npy`` written atomically) and memory-mapped read-only.

    Worker side: no database. A cache of the wrong shape is rebuilt. Non-square images are
    center-cropped to a square before resizing. Two workers building the same cache at once
    each write their own temp file; the last rename wins (same content).

    Built in blocks of ``PIXEL_BLOCK`` images written to the file in order (not through a
    memory map), so the memory it takes does not grow with N; with ``workers`` > 0 the
    images are decoded by that many DataLoader worker processes (``engine.streams``).

    Args:
        progress: receives ``ProgressEvent(stage="pixels", step=images done, total=N)``
            while building.
        workers: decoding processes; 0 decodes in this one.
    """
    if size < 1:
        raise DatasetError(f"size must be >= 1, got {size}")
    cache = Path(cache)
    n = len(paths)
    if cache.exists():
        arr = np.load(cache, mmap_mode="r", allow_pickle=False)
        if arr.shape == (n, size, size, 3) and arr.dtype == np.uint8:
            return arr
        log.warning("pixel cache %s has shape %s, expected %s: rebuilding it", cache,
                    arr.shape, (n, size, size, 3))
        del arr
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        header = engine.paths.new_memmap(tmp, np.uint8, (n, size, size, 3))  # blocks reserved
        offset = header.offset
        del header
        last_report = 0.0
        done = 0
        with open(tmp, "rb+") as f:
            f.seek(offset)
            for block in _decoded_blocks(paths, size, workers):  # (k, size, size, 3)
                if cancel is not None:
                    cancel.raise_if_cancelled()
                f.write(np.ascontiguousarray(block).tobytes())
                done += len(block)
                now = time.monotonic()
                if now - last_report >= _REPORT_EVERY_S or done == n:
                    last_report = now
                    progress(ProgressEvent(stage="pixels", step=done, total=n))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return np.load(cache, mmap_mode="r", allow_pickle=False)


PIXEL_BLOCK = 256  # images decoded and written at once by pixel_cache


def _decoded_blocks(paths: list[Path] | list[str], size: int, workers: int) -> Any:
    """The images of ``paths`` at ``size``, in order, as (k, size, size, 3) uint8 blocks."""
    if workers <= 0 or len(paths) <= PIXEL_BLOCK:  # one block: not worth a process
        for start in range(0, len(paths), PIXEL_BLOCK):
            yield np.stack([file_pixels(p, size) for p in paths[start:start + PIXEL_BLOCK]])
        return
    from torch.utils.data import DataLoader

    from engine.streams import ImageFiles, stack_images

    loader = DataLoader(ImageFiles(paths, size), batch_size=PIXEL_BLOCK, num_workers=workers,
                        collate_fn=stack_images, multiprocessing_context="spawn")
    yield from loader
