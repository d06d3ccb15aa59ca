"""The jobs panel under the tabs: every background job, its progress, cancel / retry, log.

A ``gr.Timer`` calls ``JobManager.poll()`` (start queued jobs, ingest finished ones) and
redraws the table; all state is in the project, so a reload shows the same jobs.

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from engine.jobs import ACTIVE, read_log_tail
from engine.project import Job
from studio import ui
from studio.choices import job_progress
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

POLL_SECONDS = 1.5
SHOWN_JOBS = 15
COLUMNS = ["job", "status", "progress", "ETA", "last metric", "started", "id"]


def jobs_table(ctx: StudioContext, jobs: list[Job] | None = None) -> pd.DataFrame:
    jobs = ctx.project.list(Job) if jobs is None else jobs
    rows = []
    for job in reversed(jobs[-SHOWN_JOBS:]):
        p = job_progress(ctx, job)
        status = job.status if not job.error or job.status == "done" else \
            f"{job.status}: {job.error[:90]}"
        started = job.started_at.strftime("%H:%M:%S") if job.started_at else ""
        rows.append([job.title, status, f"{p['percent']:.0f} %", ui.duration(p["eta"]),
                     p["metric"], started, job.id])
    return pd.DataFrame(rows, columns=COLUMNS)


def job_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(f"{j.title} ({j.status})", j.id) for j in ctx.project.list(Job)[-SHOWN_JOBS:]]


def log_text(ctx: StudioContext, job_id: str | None) -> str:
    if not job_id:
        return ""
    try:
        job = ctx.project.get(Job, job_id)
    except Exception:  # noqa: BLE001 - a vanished job just shows nothing
        return ""
    text = read_log_tail(ctx.job_folder(job), max_chars=3000)
    head = f"[{job.status}] {job.title}" + (f"\n{job.error}" if job.error else "")
    return head + ("\n\n" + text if text else "\n\n(no log yet)")


def tick(ctx: StudioContext, last_table: str | None, job_id: str | None
         ) -> tuple[Any, Any, Any, Any]:
    """Timer body: poll the jobs, redraw what changed. Returns (table, table_sig, revision,
    log)."""
    try:
        jobs = ctx.poll()
        table = jobs_table(ctx, jobs)
        sig = table.to_json()
        active = any(j.id == job_id and j.status in ACTIVE for j in jobs)
        return (table if sig != last_table else gr.skip(), sig, ctx.revision(),
                log_text(ctx, job_id) if active else gr.skip())
    except Exception:  # noqa: BLE001 - a failed poll (e.g. mid project switch) must not
        log.exception("job poll failed")  # stop the timer: the next tick tries again
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()


# ---------------------------------------------------------------------- event handlers


def pick_row(evt: gr.SelectData) -> Any:
    """A click in the table chooses that row's job."""
    row = evt.row_value or []
    return row[-1] if row else gr.skip()


@ui.guard(2)
def do_cancel(ctx: StudioContext, job_id: str | None) -> tuple[str, Any]:
    if not job_id:
        return ui.error_md("choose a job first"), gr.skip()
    job = ctx.cancel(job_id)
    return ui.ok_md(f"cancel sent to {job.title}"), jobs_table(ctx)


@ui.guard(2)
def do_retry(ctx: StudioContext, job_id: str | None) -> tuple[str, Any]:
    if not job_id:
        return ui.error_md("choose a job first"), gr.skip()
    job = ctx.retry(job_id)
    return ui.ok_md(f"{job.title} queued again ({job.status})"), jobs_table(ctx)


def follow(ctx: StudioContext, job_id: str | None) -> Any:
    """Keep the user's job, unless it is finished and a newer one is active."""
    jobs_now = ctx.project.list(Job)
    current = next((j for j in jobs_now if j.id == job_id), None)
    newest = jobs_now[-1] if jobs_now else None
    if newest is not None and newest.status in ACTIVE and \
            (current is None or current.status not in ACTIVE):
        job_id = newest.id
    return ui.dropdown(job_choices(ctx), job_id)


def redraw(ctx: StudioContext) -> tuple[pd.DataFrame, str]:
    t = jobs_table(ctx)
    return t, t.to_json()


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Column(elem_classes=["jobs-panel"], elem_id="jobs-panel"):
        gr.Markdown("### Jobs", elem_classes=["panel-title"])
        table = gr.Dataframe(value=ui.initial(jobs_table, ctx), interactive=False, wrap=True,
                             max_height=260, elem_id="jobs-table", show_label=False,
                             column_widths=["30%", "20%", "8%", "8%", "16%", "8%", "10%"])
        with gr.Row(elem_classes=["bottom-align"]):
            chosen = gr.Dropdown(label="Job", choices=[], value=None,
                                 allow_custom_value=True, scale=4,
                                 elem_id="job-choice")
            cancel = gr.Button("Cancel job", variant="stop", size="sm", scale=1)
            retry = gr.Button("Retry job", size="sm", scale=1)
        status = gr.HTML()
        with gr.Accordion("Log of the chosen job", open=False):
            logbox = gr.Code(language=None, lines=10, max_lines=18, interactive=False,
                             show_label=False, elem_id="job-log")
    table_sig = gr.State(None)

    gr.Timer(POLL_SECONDS).tick(ui.bind(tick, ctx), [table_sig, chosen],
                                [table, table_sig, shared.revision, logbox],
                                show_progress="hidden", queue=True,
                                concurrency_limit=None)  # read-mostly: tabs must not queue
    table.select(pick_row, None, chosen, show_progress="hidden")
    chosen.change(ui.bind(log_text, ctx), chosen, logbox, show_progress="hidden",
                  concurrency_limit=None)
    cancel.click(ui.bind(do_cancel, ctx), chosen, [status, table])
    retry.click(ui.bind(do_retry, ctx), chosen, [status, table])
    shared.on_refresh(ui.bind(follow, ctx), [chosen], [chosen])
    shared.on_refresh(ui.bind(redraw, ctx), [], [table, table_sig])
