"""Projects tab: the project picker (create, open, recent projects, the demo one click away).

Projects live under one folder, ``$RCDM_STUDIO_PROJECTS`` or ``./projects`` (``/data/projects``
on a Space). The recent list is ``recent.json`` in the studio's home
(``studio.choices.studio_home``: ``$RCDM_STUDIO_HOME``, else ``$XDG_CONFIG_HOME/rcdm-studio``,
else ``~/.config/rcdm-studio``). When the studio is bound to a non-local address, a project
outside the projects folder is refused, so a visitor cannot open (and serve) any file of the machine.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import gradio as gr

from engine.errors import InvalidConfigError
from engine.project import Dataset, Job, project_paths
from studio import ui
from studio.choices import import_demo, projects_root, studio_home
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
MAX_RECENT = 12
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_local(host: str | None) -> bool:
    return (host or "127.0.0.1") in LOCAL_HOSTS


def resolve_project(ref: str, root: Path | None = None, restrict: bool = False) -> Path:
    """A project name (``NAME`` -> ``ROOT/NAME.duckdb``) or path -> the ``.duckdb`` path.

    Args:
        ref: a bare name (letters, digits, ``_ . -``) or a path to ``NAME[.duckdb]``.
        root: the projects folder (default ``projects_root()``).
        restrict: refuse paths outside ``root`` (the studio is reachable from the network).

    Raises:
        InvalidConfigError: empty or malformed name, or a path outside ``root`` when
            ``restrict``.
    """
    root = (root or projects_root()).absolute()
    ref = (ref or "").strip()
    if not ref:
        raise InvalidConfigError("type a project name, e.g. flowers")
    if "/" not in ref and os.sep not in ref and not ref.startswith("~"):
        stem = ref[:-len(".duckdb")] if ref.endswith(".duckdb") else ref
        if not _NAME.match(stem):
            raise InvalidConfigError(f"project name {ref!r}: use letters, digits, '_', '.' "
                                     f"or '-' (at most 64 characters)")
        return project_paths(root / stem)[0]
    db = project_paths(ref)[0]
    if restrict:
        real_root, real_db = root.resolve(), db.resolve()
        if real_root not in real_db.parents:
            raise InvalidConfigError(f"{db} is outside the projects folder {root}; this studio "
                                     f"is reachable from the network, so it opens projects "
                                     f"only from there")
    return db


# ---------------------------------------------------------------------- recent projects


def _recent_file() -> Path:
    return studio_home() / "recent.json"


def recent_projects() -> list[Path]:
    """Recently opened projects whose file still exists, newest first."""
    try:
        items = json.loads(_recent_file().read_text())
    except (OSError, ValueError):
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        p = Path(str(item))
        if p.suffix == ".duckdb" and p.is_file() and p not in out:
            out.append(p)
    return out


def remember(db: Path) -> None:
    """Put ``db`` first in the recent list (best effort: a read-only home is not an error)."""
    items = [str(db)] + [str(p) for p in recent_projects() if p != db]
    path = _recent_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(items[:MAX_RECENT], indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot write the recent projects list %s: %s", path, exc)


def recent_choices(restrict: bool = False, root: Path | None = None) -> list[tuple[str, str]]:
    root = (root or projects_root()).resolve()
    out = []
    for p in recent_projects():
        inside = p.resolve().parent == root
        if restrict and root not in p.resolve().parents:
            continue
        # projects of the projects folder by name; others with their folder's name
        out.append((p.stem if inside else f"{p.stem}  ({p.parent.name}/)", str(p)))
    return out


# ---------------------------------------------------------------------- actions


def open_project(ctx: StudioContext, ref: str, restrict: bool = False,
                 create: bool = False) -> Path:
    """Switch the studio to project ``ref`` (see ``resolve_project``) and remember it.

    Raises:
        InvalidConfigError: bad name, path outside the projects folder, or missing and not
            ``create``; ProjectLockedError: another process holds it.
    """
    db = resolve_project(ref, restrict=restrict)
    if not create and not db.is_file():
        raise InvalidConfigError(f"no project {db.stem!r} at {db}; create it instead")
    if create and db.is_file():
        raise InvalidConfigError(f"a project {db.stem!r} already exists at {db}; open it")
    db.parent.mkdir(parents=True, exist_ok=True)
    ctx.switch(db, create=True)
    remember(ctx.project.path)
    return ctx.project.path


def open_demo(ctx: StudioContext) -> tuple[Path, Job | None]:
    """Open (or create) the demo project under the projects folder; queue the import of the
    digits once (an ``import`` job, in the jobs panel).

    Returns:
        (the project path, the import job or None when it had a dataset already).
    """
    db = project_paths(projects_root() / DEMO_NAME)[0]
    db.parent.mkdir(parents=True, exist_ok=True)
    ctx.switch(db, create=True)
    remember(ctx.project.path)
    job = None
    if not ctx.project.list(Dataset):
        job = import_demo(ctx)
    return ctx.project.path, job


def current_md(ctx: StudioContext) -> str:
    p = ctx.project
    n = len(p.list(Dataset))
    return (f"**Open project: {p.path.stem}** · {n} dataset(s)  \n"
            f"<small>file {p.path}<br>assets {p.assets}</small>")


# ---------------------------------------------------------------------- event handlers


def recent_update(ctx: StudioContext, restrict: bool) -> Any:
    return ui.dropdown(recent_choices(restrict), str(ctx.project.path), prefer_last=False)


@ui.guard(2)
def on_demo(ctx: StudioContext, restrict: bool) -> tuple[str, Any]:
    db, job = open_demo(ctx)
    extra = f", importing the digits (job {job.id}, in the jobs panel)" if job else ""
    return (ui.ok_md(f"opened {db.stem}{extra}; next: the Train tab"),
            recent_update(ctx, restrict))


@ui.guard(2)
def on_create(ctx: StudioContext, restrict: bool, name: str) -> tuple[str, Any]:
    db = open_project(ctx, name, restrict=restrict, create=True)
    return (ui.ok_md(f"created {db.stem}; import a dataset in the Data tab"),
            recent_update(ctx, restrict))


@ui.guard(2)
def on_open(ctx: StudioContext, restrict: bool, ref: str | None) -> tuple[str, Any]:
    db = open_project(ctx, ref or "", restrict=restrict)
    return ui.ok_md(f"opened {db.stem}"), recent_update(ctx, restrict)


def refresh(ctx: StudioContext, restrict: bool) -> tuple[str, Any]:
    return current_md(ctx), recent_update(ctx, restrict)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared, restrict: bool = False) -> None:
    root = projects_root()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("#### Start here", elem_classes=["section-title"])
            demo_btn = gr.Button("Open the demo project (digits, no download)",
                                 variant="primary", elem_id="open-demo-project")
            gr.Markdown("<small>Creates the project <b>demo</b> in the projects folder and "
                        "imports 1,797 handwritten digits of 10 classes the first time; then "
                        "go Data → Train → Generate → Curate → Evaluate → Export.</small>")
            gr.Markdown("#### New project", elem_classes=["section-title"])
            with gr.Row(elem_classes=["bottom-align"]):
                new_name = gr.Textbox(label="Name", placeholder="e.g. flowers", scale=3,
                                      elem_id="new-project-name")
                create_btn = gr.Button("Create", scale=1, min_width=90,
                                       elem_id="create-project")
            status = gr.HTML(elem_id="projects-status")
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("#### Open a project", elem_classes=["section-title"])
            current = gr.Markdown(elem_id="current-project")
            with gr.Row(elem_classes=["bottom-align"]):
                recent = gr.Dropdown(label="Recent projects", choices=[], value=None,
                                     scale=3, elem_id="recent-projects")
                open_recent = gr.Button("Open", scale=1, min_width=90, elem_id="open-recent")
            with gr.Row(elem_classes=["bottom-align"]):
                path = gr.Textbox(label="Project name or path (NAME.duckdb)", scale=3,
                                  placeholder="NAME, or /path/to/NAME.duckdb",
                                  elem_id="open-project-path")
                open_btn = gr.Button("Open", scale=1, min_width=90, elem_id="open-project")
            where = ("only projects inside it open from this page" if restrict
                     else "projects elsewhere open by their path")
            gr.Markdown(f"<small>Projects folder: <code>{ui.escape(str(root))}</code> "
                        f"({where}). A project is <code>NAME.duckdb</code> plus "
                        f"<code>NAME.assets/</code>; back it up by copying both while no job "
                        f"runs.</small>", elem_classes=["muted"])
    outputs = [status, recent]

    demo_btn.click(ui.bind(on_demo, ctx, restrict), None, outputs, concurrency_id="project",
                   api_name="open_demo")
    create_btn.click(ui.bind(on_create, ctx, restrict), new_name, outputs,
                     concurrency_id="project", api_name="create_project")
    open_recent.click(ui.bind(on_open, ctx, restrict), recent, outputs, concurrency_id="project")
    open_btn.click(ui.bind(on_open, ctx, restrict), path, outputs, concurrency_id="project",
                   api_name="open_project")
    shared.on_refresh(ui.bind(refresh, ctx, restrict), [], [current, recent])
