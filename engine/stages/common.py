"""Helpers shared by the stage modules (owner side; ``pixels`` is the worker side of
``pixels_params``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.errors import DatasetError, InvalidConfigError, NotFoundError, NotReadyError
from engine.progress import CancelToken, ProgressFn, no_progress
from engine.project import Dataset, Encoding, Generation, Model, Project


def dataset(project: Project, ref: str | None) -> Dataset:
    """A dataset by id or name; the only one when ``ref`` is None."""
    if ref:
        return project.get(Dataset, ref)
    rows = project.list(Dataset)
    if not rows:
        raise NotReadyError("the project has no dataset yet; import one first "
                            "(rcdm-studio import, or the demo)")
    if len(rows) > 1:
        names = ", ".join(r.name for r in rows)
        raise NotFoundError(f"the project has several datasets ({names}); name one")
    return rows[0]


IMAGE_LIST = "images.txt"  # in a dataset's folder: its image files in idx order, one a line


def pixels_params(project: Project, ds: Dataset, size: int) -> dict[str, Any]:
    """Owner side: where the dataset's pixel cache at ``size`` lives and the list of image
    files it is built from (``images.txt`` in the dataset's folder, paths relative to it,
    written once: a dataset's images never change). The worker builds the cache when it is
    missing (``pixels``); the owner never decodes an image."""
    from engine import data

    root = project.abs(ds.root)
    _write_list(root / IMAGE_LIST, root, project, lambda: project.images(ds.id)["path"])
    return {"pixels_path": str(data.pixels_cache_path(project, ds, size)),
            "image_list": str(root / IMAGE_LIST), "num_images": int(ds.num_images)}


def generation_pixels_params(project: Project, gen: Generation, size: int,
                             prefix: str = "") -> dict[str, Any]:
    """Owner side: ``pixels_params`` for a generation's samples: its pixel cache at ``size``
    (``GENERATION/pixels_<size>.npy``, rows in ``idx`` order, whatever the files' format)
    and ``GENERATION/images.txt``. Keys start with ``prefix`` (an evaluation's synthetic
    part: "synthetic_"; ``pixels`` takes the same prefix).

    The cache is shared by the jobs that look at the generation at the same size: a re-encode
    with an offline encoder (its ``load_size``) and every evaluation of the generation or of
    a selection of it (``EvalConfig.image_size``), so the files are decoded once per size.
    Pretrained encoders read the files themselves with their own resize (``reads_files``),
    so their re-encode and an evaluation never share pixels. ``{}`` (no cache: the files
    are read) for a generation without a folder of its own."""
    folder = project.abs(gen.folder)
    if not gen.folder or not folder.is_dir():
        return {}
    _write_list(folder / IMAGE_LIST, folder, project, lambda: project.samples(gen.id)["path"])
    return {f"{prefix}pixels_path": str(folder / f"pixels_{int(size)}.npy"),
            f"{prefix}image_list": str(folder / IMAGE_LIST),
            f"{prefix}num_images": int(gen.count)}


def _write_list(listing: Path, root: Path, project: Project, rels: Any) -> None:
    """``listing``: the files ``rels()`` (project-relative), one a line, relative to
    ``root`` when inside it; written once (a dataset's images and a generation's samples
    never change)."""
    if listing.exists():
        return
    lines = []
    for rel in rels():
        path = project.abs(rel)
        lines.append(path.relative_to(root).as_posix() if root in path.parents else str(path))
    tmp = listing.with_name(listing.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(listing)


def pixels(params: dict[str, Any], size: int, progress: ProgressFn = no_progress,
           cancel: CancelToken | None = None, workers: int = 0,
           prefix: str = "") -> np.ndarray:
    """Worker side: the pixel cache named by ``pixels_params`` (or
    ``generation_pixels_params`` with the same ``prefix``), uint8 (N, size, size, 3)
    memory-mapped, built first when missing (decoded by ``workers`` processes, see
    ``engine.data.pixel_cache``). Specs written before the workers built caches have no
    ``image_list``: their owner built the cache."""
    from engine import data

    if f"{prefix}image_list" not in params:
        return np.load(params[f"{prefix}pixels_path"], mmap_mode="r", allow_pickle=False)
    listing = Path(params[f"{prefix}image_list"])
    paths = [listing.parent / line for line in listing.read_text(encoding="utf-8").splitlines()]
    if len(paths) != int(params[f"{prefix}num_images"]):
        raise DatasetError(f"{listing} lists {len(paths)} images, the job expects "
                           f"{params[f'{prefix}num_images']}; delete the list to have it "
                           f"rewritten")
    return data.pixel_cache(paths, Path(params[f"{prefix}pixels_path"]), size,
                            progress=progress, cancel=cancel, workers=workers)


def pixel_cache_ready(params: dict[str, Any], size: int, prefix: str = "") -> bool:
    """True when the pixel cache named by ``params`` (``pixels_params`` /
    ``generation_pixels_params`` with ``prefix``) is built, with its N images at ``size``
    (caches are renamed into place whole, so one that exists is complete)."""
    path = params.get(f"{prefix}pixels_path")
    if not path or not Path(path).is_file():
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    expected = (int(params.get(f"{prefix}num_images", arr.shape[0])), int(size), int(size), 3)
    return tuple(arr.shape) == expected and arr.dtype == np.uint8


def dataset_encoding(project: Project, ds: Dataset, encoder: str | None,
                     ref: str | None = None) -> Encoding:
    """The latest encoding of a dataset's images (by id, or by encoder name)."""
    if ref:
        enc = project.get(Encoding, ref)
        if enc.target != "dataset" or enc.dataset_id != ds.id:
            raise NotFoundError(f"encoding {ref} is not an encoding of dataset {ds.name}")
        return enc
    rows = [e for e in project.list(Encoding, dataset_id=ds.id, target="dataset")
            if encoder is None or e.encoder == encoder]
    if not rows:
        what = f"with the {encoder} encoder " if encoder else ""
        raise NotReadyError(f"dataset {ds.name} has no encoding {what}yet; encode it first")
    return rows[-1]


def generation_encoding(project: Project, gen: Generation, encoder: str | None = None,
                        ref: str | None = None) -> Encoding:
    if ref:
        enc = project.get(Encoding, ref)
        if enc.target != "generation" or enc.target_id != gen.id:
            raise NotFoundError(f"encoding {ref} is not an encoding of generation {gen.name}")
        return enc
    rows = [e for e in project.list(Encoding, target="generation", target_id=gen.id)
            if encoder is None or e.encoder == encoder]
    if not rows:
        raise NotReadyError(f"generation {gen.name} is not re-encoded yet; re-encode it first "
                            f"(rcdm-studio encode --generation {gen.name})")
    return rows[-1]


def trained_model(project: Project, ref: str | None) -> Model:
    if ref:
        model = project.get(Model, ref)
    else:
        rows = [m for m in project.list(Model) if m.status == "trained"]
        if not rows:
            raise NotReadyError("the project has no trained model yet; train one first")
        model = rows[-1]
    if model.status != "trained" or not model.checkpoint:
        raise NotReadyError(f"model {model.name} is {model.status}, not trained; "
                            f"it cannot generate yet")
    return model


class Splits(NamedTuple):
    """The image indices (``idx``, int64, ascending) of each split of a dataset, and the
    labels of ALL its images (int64 (N,), indexed by ``idx``). Images of split ``"unused"``
    are in none of the three."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    labels: np.ndarray

    def scored(self, split: str) -> np.ndarray:
        """The indices of ``split`` (``"test"`` or ``"val"``), the one an evaluation scores."""
        if split not in EVAL_SPLITS:
            raise InvalidConfigError(f"an evaluation is scored on one of {EVAL_SPLITS}, "
                                     f"got {split!r}")
        return self.test if split == "test" else self.val


EVAL_SPLITS = ("test", "val")


def split_indices(project: Project, ds: Dataset) -> Splits:
    """The train / val / test indices and the labels of a dataset (``Splits``)."""
    images = project.images(ds.id)
    labels = images["label"].to_numpy(np.int64)
    split = images["split"].to_numpy()
    return Splits(np.flatnonzero(split == "train"), np.flatnonzero(split == "val"),
                  np.flatnonzero(split == "test"), labels)


def remove_if_empty(folder: Path) -> bool:
    """Remove ``folder`` when no file is left anywhere in it (only empty sub-folders): the
    output folder of a failed attempt that wrote nothing a retry could reuse. Links are
    never followed. Returns True when it was removed."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    for _root, dirs, files in os.walk(folder):
        if files or any((Path(_root) / d).is_symlink() for d in dirs):
            return False
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()
