"""Import: an ImageFolder (or the bundled demo digits) becomes a dataset, in a worker.

- ``prepare`` checks the name and the folder, picks the dataset's id and names its folders;
  it reads no image.
- ``run`` (worker) validates every file in parallel worker processes and stores the images
  (kept as they are: hard-linked, copied or referenced; or converted to PNG) and their
  thumbnails into ``datasets/.<id>.partial`` (``engine.data.write_dataset_files``), with
  progress and cancel; the image rows go to ``images.parquet`` in the job folder. The demo
  first writes the digits as an ImageFolder into the job folder.
- ``ingest`` renames the partial folder into place and inserts the dataset and its images in
  one transaction.

Every import goes through this job: the command line (``run_job``), the studio (queued, in
the jobs panel with progress and cancel), the demo and ``rcdm-studio --demo``. The splits
(train / val / test / unused) follow ``engine.data.split_images``; classes whose splits are
too small are listed in the result's ``warnings`` (and logged).

A cancelled or failed import leaves no half dataset: the worker removes its partial folder
when it stops, ``on_failure`` removes whatever is left, and an ingest that fails removes the
folder it renamed. An *interrupted* import (the worker killed, the machine restarted) keeps
its partial folder, a hidden ``.partial`` that no row names: its retry goes on from the chunks
already done (``engine.import_pool``). ``check --repair`` deletes such a folder like any
leftover (the retry then starts over).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from engine import data, import_pool, safezip
from engine.config import ImportConfig
from engine.errors import DatasetError
from engine.progress import CancelToken, ProgressFn
from engine.project import Dataset, Project
from engine.stages import JobSpec

log = logging.getLogger(__name__)

ROWS_FILE = "images.parquet"


def prepare(project: Project, folder: str | Path | None, name: str,
            config: ImportConfig = data.DEFAULT_IMPORT, demo: bool = False,
            cleanup: str | Path | None = None, archive: str | Path | None = None,
            max_bytes: int | None = None, max_files: int | None = None) -> JobSpec:
    """Queue the import of the ImageFolder ``folder`` (or of the demo digits, ``demo=True``,
    or of a zip of an ImageFolder, ``archive``) as the dataset ``name``.

    Args:
        cleanup: a folder inside the project's ``uploads/`` (an uploaded zip, an unpacked
            one) the owner removes once the job has ended, whatever its outcome.
        archive: a zip inside ``cleanup``: the worker unpacks it safely
            (``engine.safezip``, at most ``max_bytes`` / ``max_files``) and imports the
            ImageFolder in it (the one top folder of a zip of the folder itself).

    Raises:
        DatasetError: an empty or taken name, a missing folder or a file, a ``cleanup``
            folder outside the project's uploads, an ``archive`` outside ``cleanup``.
    """
    name = data.check_name(project, name)
    if config.mode == "reference" and (demo or archive is not None):
        raise DatasetError("reference mode keeps images where they are, and the demo's and "
                           "an upload's files are removed after the import: use link or copy")
    cleanup_text = _cleanup_folder(project, cleanup)
    extract: dict[str, Any] = {}
    if archive is not None:
        zip_path = Path(archive).resolve()
        if not cleanup_text or Path(cleanup_text) not in zip_path.parents:
            raise DatasetError(f"the archive {zip_path} must lie in the upload folder removed "
                               f"after the import")
        extract = {"archive": str(zip_path),
                   "max_bytes": int(max_bytes or safezip.DEFAULT_MAX_BYTES),
                   "max_files": int(max_files or safezip.DEFAULT_MAX_FILES)}
        source = folder_text = ""
    elif demo:
        source, folder_text = data.DEMO_SOURCE, ""
    else:
        if folder is None:
            raise DatasetError("an import needs an image folder (or demo=True)")
        folder_text = str(data.check_folder(Path(folder)))
        source = folder_text
    dataset_id = data.new_dataset_id(project.assets)
    final_root = project.assets / "datasets" / dataset_id
    params = {
        "dataset_id": dataset_id, "name": name, "demo": bool(demo), "folder": folder_text,
        "source": source, "config": config.to_dict(),
        "final_root": str(final_root), "work_root": str(data.partial_root(final_root)),
        "root_rel": project.rel(final_root),
        "cleanup": cleanup_text, **extract,
    }
    if extract:
        params["source"] = f"upload:{Path(extract['archive']).name}"
    what = ("the demo digits" if demo else
            f"the upload {Path(extract['archive']).name}" if extract else folder_text)
    return JobSpec(kind="import", title=f"Import {what} as {name}", params=params)


def _unpack(params: dict[str, Any], dest: Path) -> Path:
    """Unpack the job's archive into ``dest`` (a retry starts over) and return the
    ImageFolder in it: the archive's root, or its one top folder when the zip holds the
    folder itself."""
    shutil.rmtree(dest, ignore_errors=True)
    root = safezip.extract_zip(params["archive"], dest, max_bytes=params["max_bytes"],
                               max_files=params["max_files"])
    entries = [p for p in root.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir() and \
            any(c.is_dir() for c in entries[0].iterdir()):
        return entries[0]
    return root


def _cleanup_folder(project: Project, cleanup: str | Path | None) -> str:
    if cleanup is None:
        return ""
    uploads = (project.assets / "uploads").resolve()
    path = Path(cleanup).resolve()
    if uploads not in path.parents:
        raise DatasetError(f"only folders inside {uploads} are removed after an import, "
                           f"got {path}")
    return str(path)


def _remove_cleanup(params: dict[str, Any]) -> None:
    if params.get("cleanup"):
        shutil.rmtree(Path(params["cleanup"]), ignore_errors=True)


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    config = ImportConfig.from_dict(params["config"])
    work_root = Path(params["work_root"])  # a killed attempt's files are resumed from
    try:
        if params.get("demo"):
            demo_dir = folder / "demo"
            shutil.rmtree(demo_dir, ignore_errors=True)
            source = data.write_demo_dataset(demo_dir / "digits")
        elif params.get("archive"):
            source = _unpack(params, folder / "unzipped")
        else:
            source = Path(params["folder"])
        written = data.write_dataset_files(source, work_root, params["root_rel"],
                                           params["dataset_id"], config, progress, cancel)
        cancel.raise_if_cancelled()
        rows = folder / ROWS_FILE
        tmp = rows.with_name(rows.name + ".tmp")
        written["images"].to_parquet(tmp, index=False)
        os.replace(tmp, rows)
    except Exception:  # failed or cancelled: nothing is left (a kill leaves the resumable part)
        shutil.rmtree(work_root, ignore_errors=True)
        raise
    finally:
        if params.get("demo"):
            shutil.rmtree(folder / "demo", ignore_errors=True)
        shutil.rmtree(folder / "unzipped", ignore_errors=True)
    return {"rows": str(rows), "classes": written["classes"], "skipped": written["skipped"],
            "num_images": int(len(written["images"])), "warnings": written["warnings"],
            "stored": written["stored"]}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    """Move the images into place and write the dataset and its image rows (all or none)."""
    final_root, work_root = Path(params["final_root"]), Path(params["work_root"])
    if any(d.id == params["dataset_id"] for d in project.list(Dataset)):
        _remove_cleanup(params)
        return params["dataset_id"]  # ingested already (the owner stopped before marking it)
    if not work_root.is_dir():
        raise DatasetError(f"the import's images are gone ({work_root} is missing); "
                           f"retry the import")
    images = pd.read_parquet(result["rows"])
    written = {"classes": result["classes"], "skipped": result["skipped"], "images": images}
    row = data.dataset_row(params["dataset_id"], params["name"], params["source"],
                           params["root_rel"], written, ImportConfig.from_dict(params["config"]),
                           job_id=params.get("job_id", ""))
    try:
        data.check_name(project, params["name"])  # another import may have taken it since
        os.replace(work_root, final_root)
        project.add_dataset(row, images)
    except BaseException:
        shutil.rmtree(work_root, ignore_errors=True)
        shutil.rmtree(final_root, ignore_errors=True)
        _remove_cleanup(params)
        raise
    shutil.rmtree(final_root / import_pool.STATE_DIR, ignore_errors=True)  # plan + journal
    Path(result["rows"]).unlink(missing_ok=True)
    _remove_cleanup(params)
    stored = ", ".join(f"{n} {how}" for how, n in sorted(result.get("stored", {}).items()))
    log.info("imported %s as dataset %r (%s): %d images (%d train / %d val / %d test; %s), "
             "%d skipped", params["source"], params["name"], params["dataset_id"],
             row.num_images, row.num_train, row.num_val, row.num_test, stored,
             len(result["skipped"]))
    for line in result.get("warnings", []):
        log.warning("dataset %s: %s", params["name"], line)
    return params["dataset_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    """No half dataset: remove what a failed or cancelled worker left. An interrupted one's
    partial folder stays for its retry (the upload it reads stays too)."""
    if status == "interrupted":
        return
    shutil.rmtree(Path(spec["params"]["work_root"]), ignore_errors=True)
    _remove_cleanup(spec["params"])


def on_retry(project: Project, params: dict[str, Any]) -> None:
    """Nothing to do: ``run`` resumes from the partial folder an interrupted attempt left
    (a failed or cancelled one left none)."""

