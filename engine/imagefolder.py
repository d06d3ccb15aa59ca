"""Export of a selection as an ImageFolder, with a manifest and a dataset card.

Layout written (loadable with ``torchvision.datasets.ImageFolder``)::

    OUT/CLASS/FILE.png     one folder per class (sanitised names), copies or hard links
    OUT/manifest.csv       one row per exported file: relative_path + every provenance column
    OUT/manifest.parquet   the same table (pyarrow)
    OUT/metadata.csv       file_name + provenance, the Hugging Face ``imagefolder`` convention
    OUT/README.md          the dataset card: counts per class and how the data was made

With ``ExportConfig.val_fraction > 0`` the images go to ``OUT/train/CLASS/FILE.png`` and
``OUT/val/CLASS/FILE.png`` (seeded, stratified per class and kind) and each split folder holds
its own ``metadata.csv``; ``ImageFolder("OUT/train")`` and
``load_dataset("imagefolder", data_dir="OUT")`` (splits "train" and "validation") read it.

Every image is written at one size, ``side x side`` (``export_size``: ``ExportConfig.size``,
or the real images' most common size): images of another size are centre-cropped to a square
and resized (LANCZOS down, BICUBIC up) as the pixel caches are (``engine.data.image_pixels``);
the manifest records each file's ``source_size`` and whether it was ``resized``, and the card
the size. Files keep their format (``.png``, ``.webp``, ``.jpg``...: the manifest's
``format``): copied or linked as they are, or, resized, re-encoded in their own format (WebP
and JPEG at the row's ``quality`` when the rows give one, the generation's, else
``engine.image_formats.DEFAULT_QUALITY``); a greyscale ("L") file stays greyscale.

The export is built in a hidden sibling folder and moved into place, so ``OUT`` is never seen
half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from engine.config import ExportConfig
from engine.data import image_pixels
from engine.errors import DatasetError, InvalidConfigError
from engine.image_formats import DEFAULT_QUALITY, format_of, save_options
from engine.paths import MAX_NAME_BYTES, sanitize_name
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

MANIFEST = "manifest.csv"
MANIFEST_PARQUET = "manifest.parquet"
HF_METADATA = "metadata.csv"  # the name the Hugging Face imagefolder loader looks for
SPLITS = ("train", "val")
# manifest columns copied into metadata.csv when present (file_name is added first)
HF_COLUMNS = ("class_name", "kind", "sample_id", "source_image_id", "seed", "model", "encoder",
              "sampler", "steps", "guidance", "distance", "band", "selection")
CARD = "README.md"
KINDS = ("synthetic", "real")
REQUIRED_COLUMNS = ("path", "class_name", "kind")
# the extensions torchvision's ImageFolder accepts
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# columns summarised in the dataset card when present
PROVENANCE_COLUMNS = ("model_id", "encoder", "sampler", "steps", "guidance", "selection",
                      "generation_id", "selection_id")

# ----------------------------------------------------------------------------------------------
# names: one safe path component per class and file (``engine.paths.sanitize_name``)


def _unique(stem: str, taken: set[str], ext: str = "") -> str:
    """``stem + ext`` or ``stem_2 + ext``, ``stem_3 + ext``, ... not yet in ``taken``.

    Compared case-insensitively (macOS and Windows filesystems are); adds the result to ``taken``.
    """
    candidate, i = stem + ext, 1
    while candidate.casefold() in taken:
        i += 1
        candidate = f"{stem}_{i}{ext}"
    taken.add(candidate.casefold())
    return candidate


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def is_previous_export(folder: Path) -> bool:
    """True when ``folder`` holds an export written by ``export_imagefolder`` (its manifest.csv
    whose header names ``relative_path``)."""
    manifest = Path(folder) / MANIFEST
    if not manifest.is_file():
        return False
    with open(manifest, encoding="utf-8", errors="replace") as f:
        header = f.readline()
    return header.split(",")[0].strip() == "relative_path"


# ----------------------------------------------------------------------------------------------
# one size


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"cannot read the size of {path}: {exc}") from exc


def export_size(config: ExportConfig, reference: list[tuple[int, int]]) -> int:
    """The side every exported image gets: ``config.size``, else that of the most common
    (width, height) in ``reference`` (the real images' sizes; ties: the larger), its shorter
    side when it is not square.

    Raises:
        DatasetError: ``config.size`` is 0 and there is no reference size.
    """
    if config.size:
        return int(config.size)
    if not reference:
        raise DatasetError("no image to take the export's size from; give a size")
    counts = pd.Series([f"{w}x{h}" for w, h in reference]).value_counts()
    top = counts[counts == counts.max()].index
    w, h = max((tuple(map(int, k.split("x"))) for k in top), key=lambda s: s[0] * s[1])
    return min(w, h)


def _write_resized(src: Path, dst: Path, side: int, quality: Any = None) -> None:
    """``src`` as a ``side x side`` image at ``dst``: greyscale ("L") when ``src`` is (a
    generated image of a greyscale model, a greyscale real image), else RGB (format from
    ``dst``'s extension; PNG, WebP and JPEG with ``engine.image_formats.save_options`` at
    ``quality``, a number in 1..100 or None / NaN for ``DEFAULT_QUALITY``)."""
    from PIL import Image

    with Image.open(src) as img:
        img.load()
        pixels = Image.fromarray(image_pixels(img, side))
        if img.mode in ("L", "1", "LA", "I", "I;16", "F"):
            pixels = pixels.convert("L")  # R == G == B: exact
    fmt = format_of(dst)
    if fmt not in ("png", "webp", "jpeg"):
        pixels.save(dst)
        return
    try:
        q = int(quality) if quality is not None and 1 <= float(quality) <= 100 else None
    except (TypeError, ValueError):
        q = None
    pixels.save(dst, **save_options(fmt, q or DEFAULT_QUALITY))


# ----------------------------------------------------------------------------------------------
# export


def split_rows(rows: pd.DataFrame, val_fraction: float, seed: int = 0) -> np.ndarray:
    """(N,) "train" / "val" per row: seeded, stratified per (kind, class_name).

    Each group of n rows sends ``floor(val_fraction n + 1/2)`` rows to "val", but always
    keeps at least one in "train".
    """
    out = np.full(len(rows), "train", dtype=object)
    if val_fraction <= 0 or len(rows) == 0:
        return out
    rng = np.random.default_rng(seed)
    groups = rows.groupby([rows["kind"].astype(str), rows["class_name"].astype(str)],
                          sort=True).indices
    for _, idx in sorted(groups.items()):
        n = len(idx)
        n_val = min(int(np.floor(val_fraction * n + 0.5)), n - 1)
        if n_val > 0:
            out[rng.permutation(idx)[:n_val]] = "val"
    return out


def _plan(rows: pd.DataFrame, config: ExportConfig | None = None) -> pd.DataFrame:
    """Add split, class_folder, file_name and relative_path columns (sanitised,
    collision-free)."""
    config = config or ExportConfig()
    plan = rows.copy()
    # 1. one folder per distinct class name, in sorted order so suffixes are deterministic
    taken: set[str] = set()
    folders = {}
    for cls in sorted(plan["class_name"].astype(str).unique()):
        folders[cls] = _unique(sanitize_name(cls, MAX_NAME_BYTES - 8), taken)
    plan["class_folder"] = plan["class_name"].astype(str).map(folders)
    # 2. file names from the source stems, unique inside each class folder
    files = []
    taken_in: dict[str, set[str]] = {}
    for folder, src in zip(plan["class_folder"], plan["path"]):
        src = Path(src)
        ext = src.suffix.lower()
        stem = sanitize_name(src.stem, MAX_NAME_BYTES - len(ext.encode()) - 8)
        files.append(_unique(stem, taken_in.setdefault(folder, set()), ext))
    plan["file_name"] = files
    plan["relative_path"] = plan["class_folder"] + "/" + plan["file_name"]
    if config.val_fraction > 0:
        plan["split"] = split_rows(plan, config.val_fraction, config.split_seed)
        plan["relative_path"] = plan["split"] + "/" + plan["relative_path"]
    return plan


def _write_hf_metadata(manifest: pd.DataFrame, folder: Path) -> None:
    """metadata.csv per split folder (or at the root): ``file_name`` relative to it, then
    ``label`` (the class folder: with a metadata file the loader infers no label itself) and
    the provenance columns of ``HF_COLUMNS``."""
    cols = [c for c in HF_COLUMNS if c in manifest.columns]
    if "split" in manifest.columns:
        for split in SPLITS:
            part = manifest[manifest["split"] == split]
            if len(part):
                meta = part[cols].copy()
                meta.insert(0, "label", part["class_folder"])
                meta.insert(0, "file_name", part["class_folder"] + "/" + part["file_name"])
                meta.to_csv(folder / split / HF_METADATA, index=False)
    else:
        meta = manifest[cols].copy()
        meta.insert(0, "label", manifest["class_folder"])
        meta.insert(0, "file_name", manifest["relative_path"])
        meta.to_csv(folder / HF_METADATA, index=False)


def _write_manifest(manifest: pd.DataFrame, folder: Path) -> None:
    manifest.to_csv(folder / MANIFEST, index=False)
    try:
        manifest.to_parquet(folder / MANIFEST_PARQUET, index=False, engine="pyarrow")
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for mixed columns
        log.info("manifest.parquet: storing object columns as text (%s)", exc)
        fixed = manifest.copy()
        for col in fixed.select_dtypes(include="object").columns:
            fixed[col] = fixed[col].map(lambda v: None if v is None else str(v))
        fixed.to_parquet(folder / MANIFEST_PARQUET, index=False, engine="pyarrow")


def _card_text(manifest: pd.DataFrame, card: dict[str, Any] | None, config: ExportConfig,
               folder_name: str) -> str:
    card = dict(card or {})
    split = "split" in manifest.columns
    title = str(card.pop("title", folder_name))
    description = card.pop("description", "")
    lines = [f"# {title}", ""]
    if description:
        lines += [str(description), ""]
    n = len(manifest)
    kinds = manifest["kind"].value_counts().to_dict()
    lines += [
        f"{n} images in {manifest['class_folder'].nunique()} classes "
        f"({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}), "
        "in torchvision ImageFolder layout"
        + (f" with train/ and val/ folders ({int((manifest['split'] == 'val').sum())} in val, "
           f"seeded, stratified per class)." if split else "."),
        "",
        "## Classes",
        "",
        "| folder | class | synthetic | real | total |",
        "|---|---|---:|---:|---:|",
    ]
    counts = (manifest.groupby(["class_folder", "class_name", "kind"]).size()
              .unstack(fill_value=0))
    for (folder, cls), row in counts.iterrows():
        syn, real = int(row.get("synthetic", 0)), int(row.get("real", 0))
        cls_cell = str(cls).replace("|", "\\|").replace("\n", " ")
        folder_cell = str(folder).replace("|", "\\|")
        lines.append(f"| {folder_cell} | {cls_cell} | {syn} | {real} | {syn + real} |")
    lines += ["", "## How it was made", ""]
    for key, value in card.items():
        lines.append(f"- **{key}**: {value}")
    for col in PROVENANCE_COLUMNS:
        if col in manifest.columns and col not in card:
            values = sorted(map(str, manifest[col].dropna().unique()))
            if values:
                shown = ", ".join(values[:5]) + (f", ... ({len(values)} values)"
                                                 if len(values) > 5 else "")
                lines.append(f"- **{col}**: {shown}")
    lines.append(f"- **export config**: `{config.to_json()}`")
    lines.append(f"- **exported at**: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    lines += [
        "",
        "## Files",
        "",
        f"- `{MANIFEST}` / `{MANIFEST_PARQUET}`: one row per image: `relative_path`, `kind`, "
        "`class_name`, `source_path` and every provenance column (seed, source image, model, "
        "sampler, steps, guidance, distance to the class centroid, ...).",
        "",
        f"- `{HF_METADATA}`: `file_name` and the main provenance columns, the Hugging Face "
        "`imagefolder` convention" + (" (one per split folder)." if split else "."),
        "",
        "## Loading",
        "",
        "```python",
        "from torchvision.datasets import ImageFolder",
    ]
    if split:
        lines += [f'train = ImageFolder("{folder_name}/train")',
                  f'val = ImageFolder("{folder_name}/val")']
    else:
        lines.append(f'dataset = ImageFolder("{folder_name}")')
    lines += [
        "",
        "from datasets import load_dataset  # Hugging Face",
        f'ds = load_dataset("imagefolder", data_dir="{folder_name}")',
        'ds = ds.class_encode_column("label")  # class names -> ClassLabel',
        "```",
        "",
    ]
    return "\n".join(lines)


def export_imagefolder(rows: pd.DataFrame, out_dir: Path, config: ExportConfig | None = None,
                       progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                       card: dict[str, Any] | None = None,
                       size_reference: list[str | Path] | None = None) -> dict[str, Any]:
    """Write ``rows`` as an ImageFolder at ``out_dir`` with a manifest and a dataset card.

    Args:
        rows: one row per image, with at least ``path`` (absolute source image file),
            ``class_name`` and ``kind`` ("synthetic" or "real"); every other column (seed,
            source_image_id, model_id, encoder, sampler, steps, guidance, distance, selection,
            ...) is carried into the manifest. Rows of kind "real" are exported only when
            ``config.include_real`` is set.
        out_dir: the export folder.
        config: ``ExportConfig``; ``link=True`` hard-links files instead of copying them when the
            filesystem allows (else copies, per file); ``val_fraction > 0`` writes train/ and
            val/ folders (``split_rows``: seeded by ``split_seed``, stratified per class and
            kind).
        card: free-form fields for the dataset card ("title", "description", and any
            ``key: value`` shown under "How it was made").
        size_reference: image files whose most common size is the export's when
            ``config.size`` is 0 and no real row is exported (the dataset's real images);
            None = the exported images themselves.

    Overwrite rules: a missing or empty ``out_dir`` is created; an ``out_dir`` holding a previous
    export (a ``manifest.csv`` whose header starts with ``relative_path``) is replaced whole;
    any other existing ``out_dir`` raises ``InvalidConfigError`` and is left untouched.
    The export is built in a hidden sibling folder and moved in with ``os.replace``; a failure or
    a cancel removes it and leaves ``out_dir`` as it was.

    Returns:
        {"folder": str, "count": int, "per_class": {class_name: count}, "manifest": str path of
        manifest.csv, "folders": {class_name: folder name}, "linked": int files hard-linked,
        "replaced": bool, "splits": {"train": int, "val": int}, "size": int side of every
        image, "resized": int files resized}.
    """
    config = config or ExportConfig()
    out_dir = Path(out_dir).absolute()
    if rows is None or len(rows) == 0:
        raise InvalidConfigError("nothing to export: the selection is empty")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise InvalidConfigError(f"export rows lack the column(s) {missing}")
    bad_kinds = sorted(set(rows["kind"].astype(str)) - set(KINDS))
    if bad_kinds:
        raise InvalidConfigError(f"kind must be one of {KINDS}, got {bad_kinds}")
    if not config.include_real:
        rows = rows[rows["kind"] != "real"]
        if len(rows) == 0:
            raise InvalidConfigError("nothing to export: the selection is empty "
                                     "(only real images, and include_real is off)")
    rows = rows.reset_index(drop=True)

    # 1. check the sources and the destination before writing anything
    sources = [Path(p) for p in rows["path"]]
    absent = [str(p) for p in sources if not p.is_file()]
    if absent:
        raise DatasetError(f"{len(absent)} source image(s) are missing, e.g. {absent[0]}")
    bad_ext = sorted({p.suffix for p in sources if p.suffix.lower() not in IMAGE_EXTENSIONS})
    if bad_ext:
        raise DatasetError(f"unsupported image extension(s) {bad_ext}; ImageFolder reads "
                           f"{IMAGE_EXTENSIONS}")
    replaced = False
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir() or out_dir.is_symlink():
            raise InvalidConfigError(f"export folder {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()):
            if not is_previous_export(out_dir):
                raise InvalidConfigError(
                    f"export folder {out_dir} is not empty and holds no previous export "
                    f"(no {MANIFEST}): choose an empty or new folder")
            replaced = True
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    # the one size: the given one, else the real images' (exported, or the reference)
    sizes = [image_size(p) for p in sources]
    real = (rows["kind"] == "real").to_numpy()
    if real.any():
        reference = [sz for sz, r in zip(sizes, real) if r]
    elif size_reference:
        reference = [image_size(Path(p)) for p in size_reference]
    else:
        reference = sizes
    side = export_size(config, reference)
    plan = _plan(rows, config)
    plan["source_size"] = [f"{w}x{h}" for w, h in sizes]
    plan["resized"] = [(w, h) != (side, side) for w, h in sizes]
    plan["format"] = [format_of(p) for p in sources]
    plan["width"] = plan["height"] = side
    tmp = out_dir.parent / f".{out_dir.name}.export-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    linked, old = 0, None
    try:
        # 2. copy (or hard-link) every file into the temp folder
        total, last = len(plan), 0.0
        qualities = (plan["quality"].tolist() if "quality" in plan.columns
                     else [None] * len(plan))
        for step, (src, rel, resize, quality) in enumerate(
                zip(sources, plan["relative_path"], plan["resized"], qualities), start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            dst = tmp / rel
            if not _inside(tmp, dst):
                raise InvalidConfigError(f"export path {rel!r} would leave the export folder")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if resize:
                _write_resized(src, dst, side, quality)
            elif config.link:
                try:
                    os.link(src, dst)
                    linked += 1
                except OSError:
                    shutil.copyfile(src, dst)
            else:
                shutil.copyfile(src, dst)
            now = time.monotonic()
            if step == total or now - last >= 0.1:
                last = now
                progress(ProgressEvent(stage="export", step=step, total=total))

        # 3. manifest and dataset card
        manifest = plan.rename(columns={"path": "source_path"})
        front = ["relative_path", "class_name", "kind", "class_folder", "file_name",
                 "source_path"] + (["split"] if "split" in manifest.columns else [])
        manifest = manifest[front + [c for c in manifest.columns if c not in front]]
        _write_manifest(manifest, tmp)
        _write_hf_metadata(manifest, tmp)
        card = {**(card or {}), "image size": f"{side} x {side} pixels, every image "
                f"({int(plan['resized'].sum())} resized: centre square, LANCZOS down, BICUBIC up)"}
        (tmp / CARD).write_text(_card_text(manifest, card, config, out_dir.name),
                                encoding="utf-8")

        # 4. move into place: an old export is moved aside first and removed afterwards
        if out_dir.exists():
            if replaced:
                old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(out_dir, old)
            else:
                out_dir.rmdir()  # empty
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not out_dir.exists():
            os.replace(old, out_dir)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

    per_class = {str(k): int(v) for k, v in plan["class_name"].astype(str).value_counts()
                 .sort_index().items()}
    folders = dict(zip(plan["class_name"].astype(str), plan["class_folder"]))
    log.info("exported %d images in %d classes to %s (%d hard-linked)", len(plan),
             len(per_class), out_dir, linked)
    return {"folder": str(out_dir), "count": int(len(plan)), "per_class": per_class,
            "manifest": str(out_dir / MANIFEST), "folders": folders, "linked": linked,
            "replaced": replaced, "size": side, "resized": int(plan["resized"].sum()),
            "splits": ({k: int(v) for k, v in plan["split"].value_counts().items()}
                       if "split" in plan.columns else {"train": int(len(plan))})}


def zip_export(folder: Path, zip_path: Path, progress: ProgressFn = no_progress,
               cancel: CancelToken | None = None) -> Path:
    """Zip an export folder for download; entries are ``FOLDER_NAME/...``.

    Images are stored (already compressed), text files deflated; symlinks are skipped. The zip
    is written to a temp file and moved into place (a cancelled or failed zip leaves nothing).
    ``progress`` gets a "zip" event every 500 files.

    Returns:
        ``zip_path``.
    """
    folder, zip_path = Path(folder).absolute(), Path(zip_path).absolute()
    if not folder.is_dir():
        raise InvalidConfigError(f"export folder {folder} does not exist")
    if _inside(folder, zip_path):
        raise InvalidConfigError(f"the zip {zip_path} must not be inside the folder {folder}")
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = zip_path.with_name(zip_path.name + f".tmp-{uuid.uuid4().hex[:8]}")
    paths = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        paths += [Path(root) / name for name in sorted(files)]
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for i, path in enumerate(paths):
                if i % 500 == 0:
                    if cancel is not None:
                        cancel.raise_if_cancelled()
                    progress(ProgressEvent(stage="zip", step=i, total=len(paths)))
                if path.is_symlink() or not path.is_file():
                    continue
                arcname = Path(folder.name) / path.relative_to(folder)
                compress = (zipfile.ZIP_STORED if path.suffix.lower() in IMAGE_EXTENSIONS
                            else zipfile.ZIP_DEFLATED)
                zf.write(path, arcname.as_posix(), compress_type=compress)
        os.replace(tmp, zip_path)
        progress(ProgressEvent(stage="zip", step=len(paths), total=len(paths)))
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return zip_path
