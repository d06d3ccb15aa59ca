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
from pathlib import Path
from typing import Any

import gradio as gr

from engine.errors import InvalidConfigError
from engine.paths import resolve_project
from engine.project import Dataset, Job
from studio import ui
from studio.choices import import_demo, projects_root, studio_home
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

DEMO_NAME = "demo"
MAX_RECENT = 12
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def is_local(host: str | None) -> bool:
    return (host or "127.0.0.1") in LOCAL_HOSTS


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


def folder_projects(root: Path | None = None, limit: int = 200) -> list[Path]:
    """The projects in the projects folder, by name (at most ``limit``)."""
    root = (root or projects_root())
    try:
        return sorted(p for p in root.glob("*.duckdb") if p.is_file())[:limit]
    except OSError:
        return []


def recent_choices(restrict: bool = False, root: Path | None = None) -> list[tuple[str, str]]:
    """Recent projects, then (when the studio is reachable from the network, where the list
    is every visitor's) the other projects of the projects folder."""
    root = (root or projects_root()).resolve()
    out = []
    recent = recent_projects()
    if restrict:
        recent += [p for p in folder_projects(root) if p not in recent]
    for p in recent:
        inside = p.resolve().parent == root
        if restrict and root not in p.resolve().parents:
            continue
        # projects of the projects folder by name; others with their folder's name
        out.append((p.stem if inside else f"{p.stem}  ({p.parent.name}/)", str(p)))
    return out


# ---------------------------------------------------------------------- actions


def open_project(ctx: StudioContext, ref: str, restrict: bool = False,
                 create: bool = False) -> Path:
    """Switch this browser session to project ``ref`` (see ``resolve_project``) and remember
    it. Other sessions keep their project.

    Raises:
        InvalidConfigError: bad name, path outside the projects folder, or missing and not
            ``create``; ProjectLockedError: another process holds it; SignInRequiredError:
            a visitor of a public studio asked to create one.
    """
    if create:
        ctx.access.check_write(ctx.editor, "create a project")
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
    db = demo_path()
    if not db.is_file():
        ctx.access.check_write(ctx.editor, "create the demo project")
    db.parent.mkdir(parents=True, exist_ok=True)
    ctx.switch(db, create=True)
    remember(ctx.project.path)
    job = None
    if not ctx.project.list(Dataset) and ctx.editor and not any(
            j.kind == "import" and j.status in ("queued", "running")
            for j in ctx.project.list(Job)):
        job = import_demo(ctx)
    return ctx.project.path, job


def demo_path() -> Path:
    """The demo project: ``demo`` in the projects folder, wherever it is opened from (the
    Projects tab, ``rcdm-studio --project demo``, ``rcdm-studio demo``)."""
    return resolve_project(DEMO_NAME)


def current_md(ctx: StudioContext) -> str:
    if not ctx.has_project():
        return "**No project is open.** Open the demo, create a project or open one."
    p = ctx.project
    n = len(p.list(Dataset))
    return (f"**Open project: {p.path.stem}** · {n} dataset(s)  \n"
            f"<small>file {p.path}<br>assets {p.assets}</small>")


# ---------------------------------------------------------------------- event handlers


def recent_update(ctx: StudioContext, restrict: bool) -> Any:
    current = str(ctx.project.path) if ctx.has_project() else None
    return ui.dropdown(recent_choices(restrict), current, prefer_last=False)


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
