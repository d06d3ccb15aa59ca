"""What several tabs share: dropdown choices, the image page of a dataset, job progress, the
studio's folders and the demo import. Tabs import these; they never import each other.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engine.errors import InvalidConfigError
from engine.jobs import read_progress
from engine.paths import inside, projects_root  # noqa: F401 - projects_root: used by the tabs
from engine.project import Dataset, Encoding, Generation, Job, Model, Selection, reads
from studio.context import StudioContext

log = logging.getLogger(__name__)

ALL = "all classes"  # the class dropdowns' "no filter" choice
PAGE_SIZE = 60  # thumbnails per page of a dataset


# ---------------------------------------------------------------------- folders


def studio_home() -> Path:
    """Where the studio keeps its own files (the recent projects list):
    ``$RCDM_STUDIO_HOME``, else ``$XDG_CONFIG_HOME/rcdm-studio``, else
    ``~/.config/rcdm-studio``. Tests point ``RCDM_STUDIO_HOME`` at a temporary folder."""
    env = os.environ.get("RCDM_STUDIO_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "rcdm-studio"


def studio_cache() -> Path:
    """Where the studio keeps what it can measure again (training step times of this
    machine): ``$RCDM_STUDIO_HOME/cache`` when that is set (the tests), else
    ``$XDG_CACHE_HOME/rcdm-studio``, else ``~/.cache/rcdm-studio``."""
    if os.environ.get("RCDM_STUDIO_HOME"):
        return studio_home() / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "rcdm-studio"


def server_folder(ctx: StudioContext, text: str, what: str = "folder",
                  read: bool = False) -> Path:
    """A folder of the server typed in a form, where the studio may write: inside the projects
    folder (a relative path is taken under it) but in no project's assets, or in the open
    project's ``exports/``; symlinks are resolved before the check (``engine.paths.inside``),
    so neither ``..`` nor a link leads out. ``read=True``: a folder the studio only reads
    (a model to import), anywhere inside the projects folder.

    Raises:
        InvalidConfigError: the folder resolves elsewhere.
    """
    root = projects_root()
    path = Path(text.strip()).expanduser()
    if read:  # a relative path is taken under root; the message shows it as typed
        return inside(path, root, what, f"the projects folder {root} (the studio reads server "
                                        f"folders only there)")
    if not path.is_absolute():
        path = root / path
    exports = ctx.project.assets / "exports"
    try:
        return inside(path, exports, what)
    except InvalidConfigError:
        real = inside(path, root, what, f"the projects folder {root} (the studio writes only "
                                        f"there and in the open project's exports)")
    parts = real.relative_to(root.resolve()).parts
    if not parts:
        raise InvalidConfigError(f"{what} {text.strip()} is the projects folder itself; "
                                 f"choose a folder inside it")
    if any(part.endswith(".assets") for part in parts):
        raise InvalidConfigError(f"{what} {text.strip()} is inside a project's assets, which "
                                 f"its stages own; choose a folder of its own, or one in "
                                 f"{exports}")
    return real


def receive_zip(ctx: StudioContext, zip_path: str | None, what: str, action: str,
                max_bytes: int, max_files: int) -> tuple[Path, Path]:
    """Take an uploaded zip for a job: only what is quick happens here. The visitor's rights
    and upload quota first, then the archive's directory (``engine.safezip.check_zip``:
    traversal, links, entry count, declared size), then a copy into a new folder of the
    project's ``uploads/`` (Gradio deletes its own after the request). Returns (that folder,
    the zip in it); the caller's job removes the folder, and the caller removes it when no
    job is created.

    Args:
        what: what the zip holds, for the messages ("an image folder").
        action: what a visitor would need to sign in for ("import a dataset").

    Raises:
        InvalidConfigError: no file, not a .zip; UnsafeArchiveError: traversal, links, a zip
            bomb; SignInRequiredError / QuotaError (a public studio).
    """
    import shutil
    import tempfile

    from engine.safezip import check_zip

    if not zip_path:
        raise InvalidConfigError(f"upload a .zip of {what} first")
    src = Path(zip_path)
    if src.suffix.lower() != ".zip":
        raise InvalidConfigError(f"{src.name} is not a .zip archive")
    ctx.access.check_write(ctx.editor, action)
    ctx.access.check_upload(src)
    check_zip(src, max_bytes=max_bytes, max_files=max_files)
    tmp_root = ctx.project.assets / "uploads"
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=tmp_root, prefix="zip-"))
    try:
        archive = tmp / src.name  # its name is the provenance of what it holds
        shutil.copyfile(src, archive)  # the upload cache's copy is deleted after the request
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp, archive


def discard_upload(path: str | None) -> bool:
    """Delete an uploaded file from Gradio's upload cache once it is imported or refused (a
    dataset's zip can take gigabytes there), with its per-upload folder when that is left
    empty. A file outside the cache (a path typed by hand, the user's own file) is never
    touched. Returns True when the file was deleted."""
    from gradio.utils import get_upload_folder

    if not path:
        return False
    cache = Path(get_upload_folder()).resolve()
    real = Path(path).resolve()
    if cache not in real.parents or not real.is_file():
        return False
    try:
        real.unlink()
        if real.parent != cache:
            real.parent.rmdir()  # only when empty
    except OSError as exc:
        log.info("upload %s: %s", real, exc)
    return not real.exists()


# ---------------------------------------------------------------------- dropdown choices


def dataset_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(f"{d.name} ({d.num_images} images, {d.num_classes} classes)", d.id)
            for d in ctx.project.list(Dataset)]


def class_choices(ctx: StudioContext, dataset_id: str | None) -> list[str]:
    if not dataset_id:
        return [ALL]
    ds = ctx.project.get(Dataset, dataset_id)
    return [ALL] + list(ds.classes)


def model_choices(ctx: StudioContext, trained_only: bool = False) -> list[tuple[str, str]]:
    out = []
    for m in ctx.project.list(Model):
        if trained_only and m.status != "trained":
            continue
        out.append((f"{m.name} · {m.encoder} · {m.status}", m.id))
    return out


def generation_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """Generations, each marked when it is re-encoded (curation needs that)."""
    reencoded = {e.target_id for e in ctx.project.list(Encoding, target="generation")}
    return [(f"{g.name} · {g.count:,} images" + (" · re-encoded" if g.id in reencoded else ""),
             g.id) for g in ctx.project.list(Generation)]


def selection_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(f"{s.name} · {s.count:,} images", s.id) for s in ctx.project.list(Selection)]


# ---------------------------------------------------------------------- pages


def image_page(ctx: StudioContext, dataset_id: str | None, class_name: str | None,
                 split: str | None, page: int, page_size: int = PAGE_SIZE
                 ) -> tuple[list[tuple[str, str]], list[str], int, int]:
    """One page of a dataset's thumbnails (``engine.project.reads.image_page``: one ``LIMIT``
    read, the dataset is never loaded); every class on every page.

    Args:
        class_name: a class, or ``ALL`` / None for every class.
        split: ``train`` / ``test``, or ``all`` / None for both.

    Returns:
        (gallery items [(thumbnail path, caption)], their image ids, page (clamped), pages).
    """
    if not dataset_id:
        return [], [], 1, 1
    p = reads.image_page(ctx.project, dataset_id,
                         class_name=None if not class_name or class_name == ALL else class_name,
                         split=None if split in (None, "all") else split, page=page,
                         page_size=page_size)
    items = [(str(ctx.project.abs(r.thumb or r.path)), f"{r.class_name}")
             for r in p.rows.itertuples()]
    return items, p.rows["id"].tolist(), p.page, p.pages


# ---------------------------------------------------------------------- jobs


def _timestamp(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def job_progress(ctx: StudioContext, job: Job) -> dict[str, Any]:
    """Progress of a job from its ``progress.jsonl``: percent, ETA (s), metric text, stage."""
    if job.status == "done":
        return {"percent": 100.0, "eta": None, "metric": "", "stage": ""}
    events = read_progress(ctx.job_folder(job), last=1)
    if not events:
        return {"percent": 0.0, "eta": None, "metric": "", "stage": ""}
    ev = events[-1]
    total = max(int(ev.get("total") or 0), 1)
    frac = min(max(float(ev.get("step") or 0) / total, 0.0), 1.0)
    started = _timestamp(job.started_at)
    eta = None
    if job.status == "running" and started and 0 < frac < 1:
        elapsed = max(float(ev.get("time") or started) - started, 0.0)
        eta = elapsed * (1 - frac) / frac
    metrics = ev.get("metrics") or {}
    metric = ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}"
                       for k, v in list(metrics.items())[:2])
    return {"percent": 100.0 * frac, "eta": eta, "metric": metric or ev.get("message", ""),
            "stage": ev.get("stage", "")}


# ---------------------------------------------------------------------- imports


def import_demo(ctx: StudioContext, name: str = "digits", config: Any = None) -> Job:
    """Queue the import of the bundled demo dataset into the open project (an ``import``
    job: the jobs panel shows its progress and can cancel it). ``config``: an ImportConfig
    (default: the engine's)."""
    from engine.stages import import_stage

    extra = {} if config is None else {"config": config}
    return ctx.submit(import_stage.prepare(ctx.project, None, name or "digits", demo=True,
                                           **extra))


def import_outcome(ctx: StudioContext, job_id: str) -> tuple[str, Dataset | None]:
    """The state of an import job: ``("running", None)``, ``("done", dataset)`` or
    ``(status, None)`` when it failed, was cancelled or interrupted (``job.error`` says why)."""
    job = ctx.project.get(Job, job_id)
    if job.status in ("queued", "running"):
        return "running", None
    if job.status == "done" and job.result_id:
        return "done", ctx.project.get(Dataset, job.result_id)
    return job.status, None
