"""Export tab: a selection (optionally with the real images) as an ImageFolder, and a zip.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import ExportConfig
from engine.errors import NotReadyError
from engine.project import Export, Job, Selection
from studio import ui
from studio.choices import selection_choices, server_folder
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

def export(ctx: StudioContext, selection_id: str | None, include_real: bool,
           out_dir: str | None, link: bool = False, val_fraction: float = 0.0,
           split_seed: int = 0) -> Job:
    from engine.stages import export_stage

    if not selection_id:
        raise NotReadyError("save a selection in the Curate tab first")
    config = ExportConfig(include_real=bool(include_real), link=bool(link),
                          val_fraction=float(val_fraction or 0.0), split_seed=int(split_seed or 0))
    # a folder from the page stays in the projects folder (or the project's assets)
    folder = server_folder(ctx, out_dir, "export folder") if (out_dir or "").strip() else None
    return ctx.submit(export_stage.prepare(ctx.project, config, selection_id, folder))


def export_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(f"{Path(x.folder).name} · {x.count:,} images", x.id)
            for x in ctx.project.list(Export)]


def exports_table(ctx: StudioContext) -> pd.DataFrame:
    sels = {s.id: s.name for s in ctx.project.list(Selection)}
    rows = [[sels.get(x.selection_id, x.selection_id), x.count,
             ("yes" if x.config.get("include_real") else "no")
             + (f" · val {x.config['val_fraction']:.0%}"
                if x.config.get("val_fraction") else ""),
             x.created_at.strftime("%Y-%m-%d %H:%M") if x.created_at else "", x.folder]
            for x in ctx.project.list(Export)]
    return pd.DataFrame(rows, columns=["selection", "images", "with real", "created", "folder"])


def zip_view(ctx: StudioContext, export_id: str | None) -> tuple[Any, Any]:
    """(zip status, download button) of an export: its current zip ready to download, its
    zip job's state, or nothing yet (``gr.skip()`` for the status)."""
    from engine.stages import zip_stage

    if not export_id:
        return gr.skip(), gr.update(visible=False)
    x = ctx.project.get(Export, export_id)
    path = zip_stage.current(ctx.project, x)
    if path is not None:
        size = path.stat().st_size
        text = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        return (ui.ok_md(f"{path.name} ready ({text})"),
                gr.update(value=str(path), visible=True))
    job = _zip_job(ctx, x)
    if job is not None and job.status in ("queued", "running", "ingesting"):
        return (ui.info_md(f"zipping {x.count:,} images (job {job.id}, {job.status}; the "
                           f"download appears here when it is done)"),
                gr.update(visible=False))
    if job is not None and job.status in ("failed", "interrupted"):
        return ui.error_md(f"the zip job {job.id} {job.status}: {job.error}"), \
            gr.update(visible=False)
    return gr.skip(), gr.update(visible=False)


def _zip_job(ctx: StudioContext, x: Export) -> Job | None:
    """The latest zip job of export ``x`` (None when there is none)."""
    from engine.stages import zip_stage

    title = zip_stage.title(x)
    jobs = [j for j in ctx.project.list(Job, kind="zip") if j.title == title]
    return jobs[-1] if jobs else None


def make_zip(ctx: StudioContext, export_id: str | None) -> Job | None:
    """Zip an export for download: a ``zip`` job (None when its zip is already current, or
    one is queued or running for it)."""
    from engine.stages import zip_stage

    if not export_id:
        raise NotReadyError("export a selection first")
    x = ctx.project.get(Export, export_id)
    if zip_stage.current(ctx.project, x) is not None:
        return None
    job = _zip_job(ctx, x)
    if job is not None and job.status in ("queued", "running", "ingesting"):
        return None
    return ctx.submit(zip_stage.prepare(ctx.project, x.id))


# ---------------------------------------------------------------------- event handlers


@ui.guard(2)
def on_export(ctx: StudioContext, sel, real, out, link_v=False, val_v=0.0,
              seed_v=0) -> tuple[str, Any]:
    job = export(ctx, sel, bool(real), out, bool(link_v), val_v, seed_v)
    return ui.ok_md(f"{job.title}: {job.status} (progress in the Jobs panel)"), gr.skip()


@ui.guard(2)
def on_zip(ctx: StudioContext, export_id: str | None) -> tuple[Any, Any]:
    """"Prepare zip": a zip job (the Jobs panel shows its progress), or the current zip."""
    make_zip(ctx, export_id)
    return zip_view(ctx, export_id)


@ui.guard(2)
def on_choose(ctx: StudioContext, export_id: str | None) -> tuple[Any, Any]:
    """Another export chosen: its zip when there is one, else the download hides."""
    status, download = zip_view(ctx, export_id)
    return (status if isinstance(status, str) else ""), download


def refresh(ctx: StudioContext, sel: str | None, export_id: str | None) -> tuple[Any, ...]:
    status, download = zip_view(ctx, export_id)
    return (ui.dropdown(selection_choices(ctx), sel), exports_table(ctx),
            ui.dropdown(export_choices(ctx), export_id), status, download)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            selection = gr.Dropdown(label="Selection", choices=[], value=None,
                                    allow_custom_value=True,
                                    elem_id="export-selection")
            include_real = gr.Checkbox(label="Include the real training images", value=False,
                                       elem_id="export-include-real")
            link = gr.Checkbox(label="Hard-link files instead of copying (falls back to copy)",
                               value=False, elem_id="export-link")
            with gr.Row():
                val_fraction = gr.Slider(0.0, 0.5, value=0.0, step=0.05,
                                         label="Validation split (0: none; train/ and val/ "
                                               "folders, stratified)",
                                         elem_id="export-val-fraction")
                split_seed = gr.Number(value=0, precision=0, label="Split seed", minimum=0,
                                       elem_id="export-split-seed")
            out_dir = gr.Textbox(label="Folder (optional; inside the projects folder, a "
                                       "relative path is taken there)",
                                 placeholder="default: inside the project's assets")
            export_btn = gr.Button("Export ImageFolder", variant="primary",
                                   elem_id="export-button")
            status = gr.HTML(elem_id="export-status")
        with gr.Column(scale=2):
            table = gr.Dataframe(value=ui.initial(exports_table, ctx), interactive=False, max_height=240,
                                 label="Exports", wrap=True, elem_id="exports-table",
                                 column_widths=["18%", "10%", "11%", "17%", "44%"])
            with gr.Row(elem_classes=["bottom-align"]):
                chosen = gr.Dropdown(label="Export", choices=[], value=None,
                                     allow_custom_value=True, scale=3,
                                     elem_id="export-choice")
                zip_btn = gr.Button("Prepare zip", scale=1, elem_id="zip-button")
                download = gr.DownloadButton("Download zip", visible=False, scale=1,
                                             variant="primary", elem_id="download-button")
            zip_status = gr.HTML(elem_id="zip-status")

    form = [selection, include_real, out_dir, link, val_fraction, split_seed]

    export_btn.click(ui.bind(on_export, ctx), form, [status, table], api_name="export")
    zip_btn.click(ui.bind(on_zip, ctx), chosen, [zip_status, download], api_name="zip")
    chosen.change(ui.bind(on_choose, ctx), chosen, [zip_status, download])
    shared.on_refresh(ui.bind(refresh, ctx), [selection, chosen],
                      [selection, table, chosen, zip_status, download])
