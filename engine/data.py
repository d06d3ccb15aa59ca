"""Image datasets: validation, ImageFolder import, stratified splits, pixel caches, the demo.

An imported dataset lives in ``ASSETS/datasets/<dataset_id>/``::

    images/<label:04d>/<idx:06d>.<ext>  every valid image: the user's file kept as it is
                                         (.jpg / .png / .webp, hard-linked or copied) or
                                         converted (.png, RGB, longer side <= max_side);
                                         none for images a ``reference`` import names where
                                         they lie (the row holds their absolute path)
    thumbs/<label:04d>/<idx:06d>.<ext>  a thumbnail (longer side thumbnail_size) where the
                                         image is not small enough to be its own
    files.parquet                        per image: kept or converted, how, size, mtime and
                                         digest at import (``engine.check`` compares them)
    pixels_<size>.npy                    uint8 (N, size, size, 3) caches made by pixel_cache
                                         (in the workers of the stages that need them)

Datasets imported before issue 17 hold a PNG of every image and no ``files.parquet``; they
read the same way.

``idx`` runs over the whole dataset (0..N-1, classes in label order, files sorted by path)
and is the row of the image in every array computed from the dataset (pixels, embeddings).

Import is all-or-nothing: images are written into a ``.partial`` folder, renamed into place
when every file has been read, and the dataset and its image rows are inserted in one
transaction; any error or cancel removes the folder and leaves no row (a killed import
leaves the folder, which its retry resumes: ``engine.import_pool``). The pieces here
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
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import engine.paths
from engine import import_pool
from engine.config import ImportConfig
from engine.errors import DatasetError
from engine.image_store import (  # noqa: F401 - "one image" used to live here
    _to_rgb,
    make_thumbnail,
    validate_image,
)
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress
from engine.project import Dataset, Project, dumps, new_id

log = logging.getLogger(__name__)

DEFAULT_IMPORT = ImportConfig()
DEMO_SOURCE = "sklearn.datasets.load_digits (bundled, 8x8 handwritten digits)"
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
    """Validate every file of an ImageFolder and store the images and their thumbnails.

    No database: the files go to ``work_root`` (``images/<label>/<idx>.<ext>``,
    ``thumbs/...``, ``files.parquet``); the rows name them under ``root_rel``, the
    assets-relative folder ``work_root`` is renamed to once the rows are written.
    ``config.mode`` says how a kept file is stored (``engine.image_store``): hard-linked
    (``link``, a copy across file systems), copied (``copy``) or left where it is
    (``reference``: the row names its absolute path); converted files are PNGs.

    The files are spread over ``import_workers(config)`` worker processes in chunks of
    ``CHUNK_FILES``. The work is resumable: the plan (the files listed when the import
    started) and a journal of the finished chunks live in ``work_root/.import/``; called
    again on a ``work_root`` a killed import left, it goes on with the chunks not done.

    Args:
        folder: the ImageFolder root (``check_folder``).
        progress: receives ``ProgressEvent(stage="import", step=files done, total=files)``.
        cancel: polled between chunks (and between files when no pool is used).

    Returns:
        ``{"classes": [...], "skipped": [{"path", "reason"}], "images": DataFrame,
        "warnings": [...], "stored": {"linked": n, ...}}`` with one row per valid image
        (Image columns, ``split`` included).

    Raises:
        DatasetError: no class sub-folder, or a class without a valid image.
        Cancelled: the token was set. The caller removes ``work_root``.
    """
    folder = Path(folder).absolute()
    work_root = Path(work_root)
    # 1. the plan: every file, class by class (read back when resuming)
    plan = import_pool.load_plan(work_root, folder, config)
    if plan is None:
        shutil.rmtree(work_root, ignore_errors=True)  # nothing (or nothing usable) to resume
        classes, per_class = scan_image_folder(folder)
        for class_name, paths in zip(classes, per_class):
            if not paths:
                raise DatasetError(f"class {class_name!r} has no image: "
                                   f"{folder / class_name} holds no file")
        files = [p.relative_to(folder).as_posix() for paths in per_class for p in paths]
        labels = [label for label, paths in enumerate(per_class) for _ in paths]
        import_pool.save_plan(work_root, folder, config, classes, files, labels)
    else:
        classes, files, labels = plan
    total = len(files)
    # 2. validate and store every file, in parallel chunks; the journal says what is done
    records = import_pool.run(folder, work_root, files, labels, config, progress, cancel)
    # 3. every class needs a valid image
    for label, class_name in enumerate(classes):
        own = [r for r in records if labels[r["pos"]] == label]
        if any(r["status"] != "skipped" for r in own):
            continue
        first = own[0]
        raise DatasetError(
            f"class {class_name!r} has no valid image: all {len(own)} file(s) in "
            f"{folder / class_name} were skipped, the first ({files[first['pos']]}) "
            f"because: {first['reason']}")
    # 4. name the files by idx (the valid images' rank), write the per-file record
    valid = import_pool.rename_by_idx(work_root, records, labels)
    skipped = [{"path": files[r["pos"]], "reason": r["reason"]} for r in records
               if r["status"] == "skipped"]
    for s in skipped:
        log.info("skipped %s: %s", s["path"], s["reason"])
    rows = []
    for idx, r in enumerate(valid):
        label = int(labels[r["pos"]])
        sub = f"{label:04d}/{idx:06d}"
        path = r["path"] or f"{root_rel}/images/{sub}{r['ext']}"
        rows.append({
            "id": f"{dataset_id}_{idx:06d}", "dataset_id": dataset_id, "idx": idx,
            "path": path,
            "thumb": f"{root_rel}/thumbs/{sub}{r['thumb_ext']}" if r["thumb_ext"] else path,
            "label": label, "class_name": classes[label],
            "width": r["width"], "height": r["height"], "source_path": files[r["pos"]],
            "channels": int(r.get("channels") or 0),  # 0: a journal of an older import
        })
    import_pool.write_file_record(work_root, valid)
    # 5. the split
    images = pd.DataFrame(rows)
    images["split"] = split_images(images["label"].to_numpy(np.int64), config)
    images["idx"] = images["idx"].astype(np.int64)
    images["label"] = images["label"].astype(np.int64)
    warned = split_warnings(images, config)
    for line in warned:
        log.warning("%s", line)
    stored: dict[str, int] = {}
    for r in valid:
        key = "converted" if r["status"] == "converted" else r["how"]
        stored[key] = stored.get(key, 0) + 1
    log.info("%d of %d files stored: %s", len(valid), total,
             ", ".join(f"{n} {k}" for k, n in sorted(stored.items())))
    return {"classes": classes, "skipped": skipped, "images": images, "warnings": warned,
            "stored": stored}


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


def file_record(project: Project, dataset: Dataset) -> pd.DataFrame | None:
    """The dataset's ``files.parquet`` (``engine.import_pool.write_file_record``: how each
    image was stored, its size, modification time and digest at import), or None for a
    dataset imported before it existed (every image re-encoded as PNG)."""
    path = project.abs(dataset.root) / import_pool.FILE_RECORD
    return pd.read_parquet(path) if path.exists() else None


def stored_counts(project: Project, dataset: Dataset) -> dict[str, int]:
    """How many images were kept (by how: linked, copied, referenced) and how many were
    converted; ``{}`` for a dataset without a file record."""
    record = file_record(project, dataset)
    if record is None:
        return {}
    key = np.where(record["stored"] == "converted", "converted", record["how"])
    return {str(k): int(n) for k, n in zip(*np.unique(key, return_counts=True))}


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
