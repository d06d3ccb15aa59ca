"""The studio: ``build_app(project) -> gr.Blocks`` and ``launch()`` (used by ``rcdm-studio``).

Layout: a guided header (which steps are done, the next one), the tabs (Projects, then
the pipeline Data, Train, Generate, Curate, Evaluate, Export, then Settings) and the jobs
panel under them. Handlers only turn widgets into engine configs and engine calls; long work
is a background job, polled by a ``gr.Timer``. All state lives in the project, so a reload
shows everything again, on the tab the user left.
"""

from __future__ import annotations

import functools
import logging
import os
import webbrowser
from pathlib import Path
from typing import Any

import gradio as gr

from engine import settings
from engine.project import Dataset, Job
from studio import map_select, ui
from studio.access import Access, Quotas, parse_size
from studio.context import StudioContext, acting_as
from studio.shared import Shared
from studio.shutdown import Shutdown
from studio.tabs import (
    access_tab,
    curate_tab,
    data_tab,
    evaluate_tab,
    export_tab,
    generate_tab,
    header_tab,
    jobs_tab,
    projects_tab,
    settings_tab,
    train_tab,
)

log = logging.getLogger(__name__)

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "studio.css"
TABS = [("Data", data_tab), ("Train", train_tab), ("Generate", generate_tab),
        ("Curate", curate_tab), ("Evaluate", evaluate_tab), ("Export", export_tab)]
LAST_TAB = "studio_last_tab"  # meta key: the tab the user left
TAB_IDS = ["projects"] + [label.lower() for label, _ in TABS] + ["settings"]
MAX_FILE_SIZE = "512mb"  # uploads (zip archives of an ImageFolder)


def build_app(project_path: str | Path | None, demo: bool = False, restrict: bool = False,
              access: Access | None = None) -> gr.Blocks:
    """Open the default project (if any) and build its studio.

    Args:
        project_path: ``NAME`` or ``NAME.duckdb`` (created when missing): the project every
            new browser session starts on; None: sessions start on the Projects tab.
        demo: queue the import of the bundled digits (a job) when the project has no dataset yet.
        restrict: the studio is reachable from the network: the picker opens projects only
            inside the projects folder.
        access: share mode, sign-in and quotas (default: private).

    Returns:
        The Blocks; its ``studio`` attribute is the StudioContext (``.close()`` it when done).

    Raises:
        ProjectLockedError: another process holds the project (its message names it).
    """
    ctx = StudioContext(project_path, access=access)
    try:
        if project_path is not None:
            if demo and not ctx.project.list(Dataset) and not any(
                    j.kind == "import" and j.status in ("queued", "running")
                    for j in ctx.project.list(Job)):
                from studio.choices import import_demo

                job = import_demo(ctx)  # a job: the jobs panel shows it, the Data tab refreshes
                log.info("importing the demo dataset (job %s)", job.id)
            settings.apply_environment(ctx.project)
            projects_tab.remember(ctx.project.path)
        ctx.on_switch.append(apply_settings)
        ctx.restrict = restrict
        blocks = _layout(ctx, restrict)
    except BaseException:
        ctx.close()
        raise
    blocks.studio = ctx  # type: ignore[attr-defined]
    return blocks


def apply_settings(ctx: StudioContext) -> None:
    """Apply the open project's settings to this process (after a project switch)."""
    settings.apply_environment(ctx.project)


def remember_tab(ctx: StudioContext, tab_id: str, loaded: bool = True) -> None:
    """Store the tab the user is on (reopened there next time). ``loaded`` is false while
    the page is still starting: the first tab reports a select then, not the user. Visitors
    of a public studio leave no trace in the project."""
    if not loaded or not ctx.has_project() or not ctx.editor:
        return
    try:
        ctx.project.set_meta(LAST_TAB, tab_id)
    except Exception:  # noqa: BLE001 - remembering a tab must never break the page
        log.exception("cannot store the last tab")


def first_tab(ctx: StudioContext) -> str:
    """The tab to show on load: the one the user left, else Projects (no project, no
    dataset) or Data."""
    if not ctx.has_project():
        return "projects"
    last = ctx.project.get_meta(LAST_TAB, "")
    if last in TAB_IDS:
        return last
    return "data" if ctx.project.list(Dataset) else "projects"


def on_load(ctx: StudioContext, stored: str | None = None) -> tuple[str, Any, bool]:
    """Page load: reopen the project this browser showed last (``stored``, kept in the
    browser's local storage) when it still exists and may be opened here; then the
    project's revision (every view refreshes) and the tab the user left."""
    if stored and ctx.session().path is None:
        try:
            db = projects_tab.resolve_project(stored, restrict=ctx.restrict)
            if db.is_file():
                ctx.switch(db, create=False)
        except Exception as exc:  # noqa: BLE001 - a stale or locked project: the default opens
            log.info("cannot reopen %s: %s", stored, exc)
    return ctx.revision(), gr.Tabs(selected=first_tab(ctx)), True


def stored_project(ctx: StudioContext) -> Any:
    """What the browser keeps as its project: this session's own choice (nothing while it
    follows the studio's default)."""
    s = ctx.session()
    return str(s.path) if s.path is not None else gr.skip()


def _layout(ctx: StudioContext, restrict: bool = False) -> gr.Blocks:
    shared = Shared()
    with gr.Blocks(title="RCDM Studio") as blocks:
        shared.revision = gr.State("")
        shared.project = gr.State("")
        loaded = gr.State(False)  # true once the load event has chosen the tab
        stored = gr.BrowserState("", storage_key="rcdm-studio-project")
        header_tab.build(ctx, shared)
        access_tab.build(ctx, shared)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Projects", id="projects", elem_id="tab-projects") as t:
                projects_tab.build(ctx, shared, restrict=restrict)
            t.select(functools.partial(remember_tab, ctx, "projects"), loaded, None,
                     show_progress="hidden", queue=False)
            for label, module in TABS:
                with gr.Tab(label, id=label.lower(), elem_id=f"tab-{label.lower()}") as t:
                    module.build(ctx, shared)
                t.select(functools.partial(remember_tab, ctx, label.lower()), loaded, None,
                         show_progress="hidden", queue=False)
            with gr.Tab("Settings", id="settings", elem_id="tab-settings") as t:
                settings_tab.build(ctx, shared)
            t.select(functools.partial(remember_tab, ctx, "settings"), loaded, None,
                     show_progress="hidden", queue=False)
        jobs_tab.build(ctx, shared)
        # Every list and view refreshes when the project's revision changes: on page load
        # (the state starts empty) and whenever the jobs timer sees a new row or status.
        # Form defaults reload when the project (or its settings) changes.
        shared.on_refresh(ctx.project_key, [], [shared.project])
        shared.on_refresh(ui.bind(stored_project, ctx), [], [stored])
        # Refreshers only read the project (under its lock): they run concurrently, so ten
        # open tabs do not wait in one queue behind each other.
        for r in shared.refreshers:
            shared.revision.change(ui.guard_refresh(r.fn, len(r.outputs)), r.inputs,
                                   r.outputs, show_progress="hidden", concurrency_limit=None)
        for r in shared.loaders:
            shared.project.change(ui.guard_refresh(r.fn, len(r.outputs)), r.inputs,
                                  r.outputs, show_progress="hidden", concurrency_limit=None)
        blocks.load(ui.bind(on_load, ctx), stored,
                    [shared.revision, tabs, loaded], show_progress="hidden")
        blocks.unload(ctx.end_session)
    return blocks


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    """``"user:password[,user2:password2]"`` -> ``[(user, password), ...]`` (None if empty).

    Raises:
        InvalidConfigError: a pair without ``:``, an empty user or password.
    """
    from engine.errors import InvalidConfigError

    if not text or not text.strip():
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise InvalidConfigError("--auth / RCDM_STUDIO_AUTH must be user:password "
                                     "(several separated by commas)")
        pairs.append((user, password))
    return pairs


def exposure_warning(host: str, credentials: list[tuple[str, str]] | None,
                     env: Any = os.environ) -> str | None:
    """The warning to log when the studio is reachable from the network without a login
    (None when bound to this machine, with a login, or on a Space: it has its own access
    control)."""
    if projects_tab.is_local(host) or credentials or env.get("SPACE_ID"):
        return None
    return (f"the studio is reachable from the network on {host} without a login: anyone who "
            f"can reach this port can use it and its files. Set RCDM_STUDIO_AUTH=user:password "
            f"in the environment (or pass --auth).")


def _served_folders(ctx: StudioContext) -> list[str]:
    """The folders the server may send files from: the assets of every open project."""
    from engine.project import project_paths

    out = []
    for db in ctx.open_paths():
        assets = project_paths(db)[1].resolve()
        if assets == Path(assets.anchor):
            raise ValueError(f"refusing to serve the filesystem root ({assets})")
        out.append(str(assets))
    return out


def launch(project_path: str | Path | None, host: str = "127.0.0.1", port: int = 7860,
           open_browser: bool = True, demo: bool = False,
           prevent_thread_lock: bool = False, auth: str | None = None,
           max_file_size: str | int = MAX_FILE_SIZE, share: str = "private",
           quotas: Quotas | None = None, editors: str | None = None) -> gr.Blocks:
    """Build and serve the studio. Files are served only from the open projects' assets.

    Args:
        project_path: the project new browser sessions start on (None: the Projects tab).
        host: bind address; anything but 127.0.0.1 / localhost makes the picker open
            projects only inside the projects folder, and asks for ``auth`` (a warning
            without it, except on a Hugging Face Space, which has its own access control).
        auth: ``user:password[,user:password]``: in private mode a login page in front of
            the studio; in public mode the accounts that sign in as editors.
        max_file_size: the largest upload (e.g. ``"512mb"``).
        share: ``private`` or ``public`` (``studio.access``).
        quotas: per-visitor limits of a public studio.
        editors: Hugging Face user names (comma-separated) that are editors once signed in
            with Hugging Face (a Space with OAuth); default ``$RCDM_STUDIO_EDITORS``.

    Unless ``prevent_thread_lock``, blocks until SIGTERM or SIGINT (also as PID 1: see
    ``studio.shutdown``), then stops the server and closes the projects (DuckDB checkpoints)
    and returns; running job workers are left to finish. Returns the Blocks.

    Raises:
        InvalidConfigError: a malformed ``auth``, an unknown ``share``; ProjectLockedError.
    """
    args = (project_path, host, port, open_browser, demo, auth, max_file_size, share, quotas,
            editors)
    if prevent_thread_lock:
        return _start(*args)
    # the handlers go in first: a signal during the (slow) start stops the studio right after
    with Shutdown() as shutdown:
        blocks = _start(*args)
        received = None
        try:
            received = shutdown.wait(lambda: blocks.is_running)
        finally:
            _stop(blocks, received)
    return blocks


def _stop(blocks: gr.Blocks, received: str | None) -> None:
    """Close the server and the projects; say which jobs are left running, and to whom."""
    ctx: StudioContext = blocks.studio  # type: ignore[attr-defined]
    paths = ctx.open_paths()
    left = ctx.running_jobs()
    close(blocks)
    why = f" ({received})" if received else ""
    names = ", ".join(str(p) for p in paths) or "no project was open"
    print(f"RCDM Studio stopped{why}; closed {names}", flush=True)  # noqa: T201 - for the terminal
    if left:
        ids = ", ".join(f"{j.id} (pid {j.pid})" for j in left)
        print(f"{len(left)} job(s) keep running in their own processes: {ids}. The next "  # noqa: T201 - for the terminal
              f"studio on this project (or `rcdm-studio jobs`) ingests their results; "
              f"`rcdm-studio jobs cancel ID` stops one.", flush=True)


def _start(project_path: str | Path | None, host: str, port: int, open_browser: bool,
           demo: bool, auth: str | None, max_file_size: str | int, share: str,
           quotas: Quotas | None, editors: str | None) -> gr.Blocks:
    """Build the app, start its server (not blocking) and return the Blocks."""
    from studio.choices import projects_root

    credentials = parse_auth(auth)
    restrict = not projects_tab.is_local(host) or share == "public"
    if editors is None:
        editors = os.environ.get("RCDM_STUDIO_EDITORS", "")
    access = Access(share, credentials, editors.split(","), quotas,
                    projects_root=projects_root())
    if access.public and quotas is not None and quotas.max_upload is not None:
        max_file_size = min(parse_size(max_file_size) or quotas.max_upload, quotas.max_upload)
    warning = exposure_warning(host, credentials) if not access.public else None
    if warning:
        log.warning(warning)
    blocks = build_app(project_path, demo=demo, restrict=restrict, access=access)
    ctx: StudioContext = blocks.studio  # type: ignore[attr-defined]
    try:
        assets = _served_folders(ctx)
    except ValueError:
        ctx.close()
        raise

    def serve_new_assets(c: StudioContext) -> None:
        blocks.allowed_paths = sorted(set(blocks.allowed_paths or []) | set(_served_folders(c)))

    ctx.on_switch.append(serve_new_assets)
    # System fonts only: the studio must work offline (no Google Fonts request).
    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate",
                           font=[gr.themes.Font(f) for f in ("system-ui", "Segoe UI",
                                                             "Roboto", "sans-serif")],
                           font_mono=[gr.themes.Font(f) for f in ("ui-monospace",
                                                                  "monospace")])
    try:
        server, url, _ = blocks.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, prevent_thread_lock=True, inbrowser=False,
            allowed_paths=assets, show_error=False, quiet=True, theme=theme,
            css_paths=[str(CSS_PATH)], footer_links=[],
            auth=None if access.public else credentials,
            auth_message="RCDM Studio: log in with the user and password given to "
                         "--auth / RCDM_STUDIO_AUTH.", max_file_size=max_file_size)
    except BaseException:
        ctx.close()
        raise
    # the map's lasso / box: answered by a route of its own, not through a Gradio event
    map_select.install(server, ctx, curate_tab.selection_answer, acting_as)
    where = f"project {ctx.open_paths()[0]}" if ctx.open_paths() else "no project: Projects tab"
    mode = ", shared publicly: visitors browse, editors sign in" if access.public else ""
    log.info("RCDM Studio on %s (%s%s)", url, where, mode)
    print(f"RCDM Studio: {url} ({where}{mode})", flush=True)  # noqa: T201 - for the terminal
    if open_browser:
        webbrowser.open(url)
    return blocks


def close(blocks: gr.Blocks) -> None:
    """Stop the server and close the project (tests, embedding)."""
    try:
        blocks.close()
    finally:
        ctx: Any = getattr(blocks, "studio", None)
        if ctx is not None:
            ctx.close()
