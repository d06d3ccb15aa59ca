"""Adopt: a model trained elsewhere becomes a trained model of the project, in a job.

- ``prepare`` (owner) resolves the dataset encoding the model is tied to, picks the model's
  id and names its folder; it reads no weights. The model folder is a folder of the server,
  or an uploaded zip of it (``archive``, in a folder of the project's ``uploads/``).
- ``run`` (worker, no database) unpacks the zip when there is one (``engine.safezip``, at
  most ``max_bytes`` / ``max_files``), copies the folder into ``models/<id>/`` in this
  project's format and loads it once (``engine.rcdm.model.adopt_folder``), then checks that
  it takes representations of the encoding's size.
- ``ingest`` (owner) adds the ``Model`` row, status ``trained``.

A model folder can be hundreds of MB: a copy and one load, work for a worker, not for a
request handler. The command line runs the same job inline (``import-model``). A refused or
failed job leaves no model folder, no row, and no upload.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from engine import safezip
from engine.errors import DatasetError, InvalidConfigError, NotReadyError
from engine.paths import given_name
from engine.progress import CancelToken, ProgressEvent, ProgressFn
from engine.project import Model, Project, dumps, new_id
from engine.stages import JobSpec, common

MAX_ZIP_BYTES = 8 * 1024 ** 3  # unpacked size of an uploaded model zip
MAX_ZIP_FILES = 10_000  # a model folder holds a handful of files


def prepare(project: Project, folder: str | Path | None, dataset_ref: str | None = None,
            encoder: str | None = None, encoding_ref: str | None = None,
            name: str | None = None, vae_id: str | None = None,
            cleanup: str | Path | None = None, archive: str | Path | None = None,
            max_bytes: int = MAX_ZIP_BYTES, max_files: int = MAX_ZIP_FILES) -> JobSpec:
    """Queue the import of the model folder ``folder`` (or of the uploaded zip ``archive``),
    tied to a dataset encoding (by id, else the latest of ``encoder``, else the latest).

    Args:
        cleanup: a folder inside the project's ``uploads/`` the job removes once it has
            ended, whatever its outcome (an upload and what it unpacks to).
        archive: a zip inside ``cleanup`` holding the model folder (its files, or the
            folder itself as the one top folder).

    Raises:
        NotReadyError: no such folder; the dataset has no encoding.
        DatasetError: a ``cleanup`` folder outside the uploads, an ``archive`` outside it.
    """
    name = given_name(name, "model name")
    ds = common.dataset(project, dataset_ref)
    enc = common.dataset_encoding(project, ds, encoder, encoding_ref)
    cleanup_text, source = "", ""
    if archive is not None:
        uploads = (project.assets / "uploads").resolve()
        cleanup_path = Path(cleanup or "").resolve()
        zip_path = Path(archive).resolve()
        if uploads not in cleanup_path.parents or cleanup_path not in zip_path.parents:
            raise DatasetError(f"an uploaded model zip must lie in a folder of {uploads}, "
                               f"got {zip_path}")
        cleanup_text, folder_text = str(cleanup_path), ""
        source = f"upload:{Path(archive).name}"
    else:
        path = Path(folder or "").expanduser()
        if not str(folder or "").strip() or not path.is_dir():
            raise NotReadyError(f"{folder} is not a folder; give the model's folder")
        folder_text = source = str(path.resolve())
    model_id = new_id("mdl")
    params = {
        "model_id": model_id, "name": name, "dataset_id": ds.id, "encoding_id": enc.id,
        "encoder": enc.encoder, "cond_dim": int(enc.dim), "dataset_name": ds.name,
        "folder": folder_text, "source": source, "vae_id": (vae_id or "").strip() or None,
        "out_dir": str(project.assets / "models" / model_id),  # made by the worker
        "cleanup": cleanup_text,
    }
    if archive is not None:
        params.update(archive=str(Path(archive).resolve()), max_bytes=int(max_bytes),
                      max_files=int(max_files))
    what = f"the upload {Path(archive).name}" if archive is not None else folder_text
    return JobSpec(kind="adopt", title=f"Import the model in {what}", params=params)


def _model_root(root: Path, upload: str) -> Path:
    """The model folder of an unpacked zip: its root, or its one top folder.

    Raises:
        NotReadyError: neither holds a model (``upload`` names the zip).
    """
    from engine.rcdm.model import META_FILE, diffusers_unet_dir

    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    tops = [root] + ([entries[0]] if len(entries) == 1 and entries[0].is_dir() else [])
    for top in tops:
        if (top / META_FILE).is_file() or diffusers_unet_dir(top) is not None:
            return top
    raise NotReadyError(f"the upload {upload} is not a model folder: no {META_FILE} and no "
                        f"diffusers UNet2DConditionModel at its top or in its one top folder")


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.rcdm.model import adopt_folder

    dst = Path(params["out_dir"])
    unzipped = Path(params["cleanup"]) / "unzipped" if params.get("archive") else None
    steps = 2 if unzipped else 1
    try:
        # 1. the uploaded zip, unpacked safely (a retry starts over)
        if unzipped is not None:
            progress(ProgressEvent(stage="adopt", step=0, total=steps, message="unpacking"))
            shutil.rmtree(unzipped, ignore_errors=True)
            src = _model_root(safezip.extract_zip(params["archive"], unzipped,
                                                  max_bytes=params["max_bytes"],
                                                  max_files=params["max_files"]),
                              Path(params["archive"]).name)
        else:
            src = Path(params["folder"])
        cancel.raise_if_cancelled()
        # 2. copied into models/<id>/ in this project's format, loaded once
        progress(ProgressEvent(stage="adopt", step=steps - 1, total=steps,
                               message="copying and loading the model"))
        meta = adopt_folder(src, dst, vae_id=params.get("vae_id"), origin=params["source"])
        # 3. it takes representations of the encoding's size
        if int(meta["cond_dim"]) != int(params["cond_dim"]):
            raise InvalidConfigError(
                f"the model takes {meta['cond_dim']}-d representations, the "
                f"{params['encoder']} encoding of {params['dataset_name']} is "
                f"{params['cond_dim']}-d: import it beside an encoding made by the encoder "
                f"it was trained on")
        cancel.raise_if_cancelled()
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    finally:
        if unzipped is not None:
            shutil.rmtree(unzipped, ignore_errors=True)
    progress(ProgressEvent(stage="adopt", step=steps, total=steps))
    extra = dict(meta.get("extra") or {})
    return {"model_dir": str(dst), "train_config": meta["train_config"],
            "steps": int(extra.get("steps") or 0), "format": extra.get("format", "rcdm")}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    """Add the model's row (its folder is in place); the upload is removed."""
    model_id = params["model_id"]
    try:
        if not any(m.id == model_id for m in project.list(Model)):
            name = project.unique_name(Model, params["name"] or f"imported-{params['encoder']}")
            project.add(Model(
                id=model_id, name=name, dataset_id=params["dataset_id"],
                encoding_id=params["encoding_id"], encoder=params["encoder"], status="trained",
                steps_done=int(result["steps"]), checkpoint=project.rel(result["model_dir"]),
                config_json=dumps(result["train_config"]), job_id=params.get("job_id", ""),
                metrics_json=dumps({"imported_from": params["source"],
                                    "format": result["format"]})))
    except BaseException:
        shutil.rmtree(Path(params["out_dir"]), ignore_errors=True)
        raise
    finally:
        _remove_cleanup(params)
    return model_id


def _remove_cleanup(params: dict[str, Any]) -> None:
    if params.get("cleanup"):
        shutil.rmtree(Path(params["cleanup"]), ignore_errors=True)


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    """No half model: the model folder and the upload go (``run`` removes them too; this
    covers a worker that was killed)."""
    params = spec["params"]
    if not any(m.id == params["model_id"] for m in project.list(Model)):
        shutil.rmtree(Path(params["out_dir"]), ignore_errors=True)
    if status != "interrupted":  # an interrupted job's retry still reads the upload
        _remove_cleanup(params)


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass  # run starts over: it unpacks again and replaces any model folder left
