"""Zip: an export folder zipped for download, in a job (an export can hold 50,000 images;
zipping it is not work for a request handler).

The zip goes to the project's ``exports/zips/<folder name>.zip`` (``zip_path``), written to a
temporary file and moved into place; a zip newer than its folder is current (``current``), so
the studio offers it for download without zipping again. Nothing is recorded as a row: the
file is the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressFn
from engine.project import Export, Project
from engine.stages import JobSpec

MAX_IMAGES = 50_000  # larger exports are used from their folder, not zipped


def zip_path(project: Project, export: Export) -> Path:
    """Where the zip of ``export`` goes (whether or not it exists)."""
    return project.assets / "exports" / "zips" / f"{Path(export.folder).name}.zip"


def current(project: Project, export: Export) -> Path | None:
    """The export's zip when it exists and is newer than its folder, else None."""
    path, folder = zip_path(project, export), Path(export.folder)
    if path.is_file() and folder.is_dir() and path.stat().st_mtime >= folder.stat().st_mtime:
        return path
    return None


def title(export: Export) -> str:
    """The job's title (also how the studio finds one already queued for this export)."""
    return f"Zip export {Path(export.folder).name} ({export.count:,} images)"


def prepare(project: Project, export_ref: str) -> JobSpec:
    """Queue the zip of an export.

    Raises:
        InvalidConfigError: more than ``MAX_IMAGES`` images, or the folder is gone.
    """
    x = project.get(Export, export_ref)
    if x.count > MAX_IMAGES:
        raise InvalidConfigError(f"the export has {x.count:,} images, too many to zip (at most "
                                 f"{MAX_IMAGES:,}); use its folder {x.folder} directly")
    if not Path(x.folder).is_dir():
        raise InvalidConfigError(f"the export's folder {x.folder} is gone: export the "
                                 f"selection again")
    return JobSpec(kind="zip", title=title(x),
                   params={"export_id": x.id, "folder": str(x.folder),
                           "zip_path": str(zip_path(project, x))})


def run(params: dict[str, Any], folder: Path, progress: ProgressFn,
        cancel: CancelToken) -> dict[str, Any]:
    from engine.imagefolder import zip_export

    path = zip_export(Path(params["folder"]), Path(params["zip_path"]), progress=progress,
                      cancel=cancel)
    return {"zip": str(path), "bytes": path.stat().st_size}


def ingest(project: Project, params: dict[str, Any], result: dict[str, Any]) -> str:
    return params["export_id"]


def on_failure(project: Project, spec: dict[str, Any], status: str, error: str) -> None:
    pass  # zip_export writes a temporary file and removes it on failure


def on_retry(project: Project, params: dict[str, Any]) -> None:
    pass
