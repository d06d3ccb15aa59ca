"""The studio: ``build_app(project) -> gr.Blocks`` and ``launch()`` (used by ``rcdm-studio``).

Layout: a guided header (which steps are done, the next one), six tabs (Data, Train,
Generate, Curate, Evaluate, Export) and the jobs panel under them. Handlers only turn
widgets into engine configs and engine calls; long work is a background job, polled by a
``gr.Timer``. All state lives in the project, so a reload shows everything again.
"""

from __future__ import annotations

import logging
import webbrowser
from pathlib import Path
from typing import Any

import gradio as gr

from engine.project import Dataset
from studio.context import StudioContext
from studio.shared import Shared
from studio.tabs import curate, data, evaluate, export, generate, header, jobs, train

log = logging.getLogger(__name__)

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "studio.css"
TABS = [("Data", data), ("Train", train), ("Generate", generate), ("Curate", curate),
        ("Evaluate", evaluate), ("Export", export)]


def build_app(project_path: str | Path, demo: bool = False) -> gr.Blocks:
    """Open the project and build its studio.

    Args:
        project_path: ``NAME`` or ``NAME.duckdb`` (created when missing).
        demo: import the bundled digits when the project has no dataset yet.

    Returns:
        The Blocks; its ``studio`` attribute is the StudioContext (``.close()`` it when done).

    Raises:
        ProjectLockedError: another process holds the project (its message names it).
    """
    ctx = StudioContext(project_path)
    try:
        if demo and not ctx.project.list(Dataset):
            from engine import data as engine_data

            ds = engine_data.import_demo(ctx.project, name="digits")
            log.info("imported the demo dataset %s (%d images)", ds.name, ds.num_images)
        blocks = _layout(ctx)
    except BaseException:
        ctx.close()
        raise
    blocks.studio = ctx  # type: ignore[attr-defined]
    return blocks


def _layout(ctx: StudioContext) -> gr.Blocks:
    shared = Shared()
    with gr.Blocks(title=f"RCDM Studio · {ctx.project.path.stem}") as blocks:
        shared.revision = gr.State("")
        header.build(ctx, shared)
        with gr.Tabs(elem_id="tabs"):
            for label, module in TABS:
                with gr.Tab(label, id=label.lower(), elem_id=f"tab-{label.lower()}"):
                    module.build(ctx, shared)
        jobs.build(ctx, shared)
        # Every list and view refreshes when the project's revision changes: on page load
        # (the state starts empty) and whenever the jobs timer sees a new row or status.
        for r in shared.refreshers:
            shared.revision.change(r.fn, r.inputs, r.outputs, show_progress="hidden")
        blocks.load(ctx.revision, None, shared.revision, show_progress="hidden")
    return blocks


def launch(project_path: str | Path, host: str = "127.0.0.1", port: int = 7860,
           open_browser: bool = True, demo: bool = False,
           prevent_thread_lock: bool = False) -> gr.Blocks:
    """Build and serve the studio. Files are served only from the project's assets folder.

    Blocks until the server stops unless ``prevent_thread_lock``; returns the Blocks.
    """
    blocks = build_app(project_path, demo=demo)
    ctx: StudioContext = blocks.studio  # type: ignore[attr-defined]
    assets = ctx.project.assets.resolve()
    if assets == Path(assets.anchor):
        ctx.close()
        raise ValueError(f"refusing to serve the filesystem root ({assets})")
    # System fonts only: the studio must work offline (no Google Fonts request).
    theme = gr.themes.Soft(primary_hue="indigo", neutral_hue="slate",
                           font=[gr.themes.Font(f) for f in ("system-ui", "Segoe UI",
                                                             "Roboto", "sans-serif")],
                           font_mono=[gr.themes.Font(f) for f in ("ui-monospace",
                                                                  "monospace")])
    try:
        _, url, _ = blocks.queue(default_concurrency_limit=1).launch(
            server_name=host, server_port=port, prevent_thread_lock=True, inbrowser=False,
            allowed_paths=[str(assets)], show_error=False, quiet=True, theme=theme,
            css_paths=[str(CSS_PATH)], footer_links=[])
    except BaseException:
        ctx.close()
        raise
    log.info("RCDM Studio on %s (project %s)", url, ctx.project.path)
    print(f"RCDM Studio: {url} (project {ctx.project.path})", flush=True)
    if open_browser:
        webbrowser.open(url)
    if not prevent_thread_lock:
        try:
            blocks.block_thread()
        finally:
            ctx.close()
    return blocks


def close(blocks: gr.Blocks) -> None:
    """Stop the server and close the project (tests, embedding)."""
    try:
        blocks.close()
    finally:
        ctx: Any = getattr(blocks, "studio", None)
        if ctx is not None:
            ctx.close()
