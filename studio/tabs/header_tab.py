"""The guided header: the open project, which steps of the pipeline are done, the next one
and what it needs, and the machine the defaults are sized for."""

from __future__ import annotations

import logging

import gradio as gr

from engine.jobs import ACTIVE
from engine.project import Dataset, Encoding, Evaluation, Export, Generation, Job, Model, Selection
from engine.settings import machine_profile
from studio import ui
from studio.choices import job_progress
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

TICK_SECONDS = 3.0  # the hint follows a running job's progress this often
# what the next-step hint calls a running job of each kind
RUNNING = {"import": "the import", "encode": "encoding", "train": "training",
           "generate": "generation", "evaluate": "the evaluation", "export": "the export"}
# (key, label, job kind that produces it, hint for the next step: what it needs, where)
STEPS = [
    ("dataset", "Data", "import", "import the demo digits (Data tab, or Projects → Open the demo "
                              "project) or an image folder"),
    ("encoding", "Encode", "encode", "encode the dataset with PCA in the Train tab"),
    ("model", "Train", "train", "train an RCDM in the Train tab, conditioned on the encoding"),
    ("generation", "Generate", "generate", "pick real images in the Generate tab and generate "
                                           "variations of them"),
    ("reencoded", "Re-encode", "encode", "re-encode the generation in the Generate tab (the "
                                         "band needs its representations)"),
    ("selection", "Curate", None, "keep a band and save a selection in the Curate tab"),
    ("evaluation", "Evaluate", "evaluate", "evaluate a training mix with the selection in the "
                                           "Evaluate tab"),
    ("export", "Export", "export", "export the selection in the Export tab"),
]


def progress_state(ctx: StudioContext) -> dict[str, bool]:
    p = ctx.project
    encs = p.list(Encoding)
    return {
        "dataset": bool(p.list(Dataset)),
        "encoding": any(e.target == "dataset" for e in encs),
        "model": any(m.status == "trained" for m in p.list(Model)),
        "generation": bool(p.list(Generation)),
        "reencoded": any(e.target == "generation" for e in encs),
        "selection": bool(p.list(Selection)),
        "evaluation": any(e.status == "done" for e in p.list(Evaluation)),
        "export": bool(p.list(Export)),
    }


def running_hint(ctx: StudioContext, job: Job) -> str:
    """"training is running: 30 %, about 2 min left; ..." for an active job (the next step
    waits for it)."""
    p = job_progress(ctx, job)
    what = RUNNING.get(job.kind, job.title)
    if job.status == "queued":
        return f"{what} is queued; the Jobs panel below shows it"
    eta = ui.duration(p["eta"])
    return (f"{what} is running: {p['percent']:.0f} %" + (f", about {eta} left" if eta else "")
            + "; its progress is in the Jobs panel below")


def header_html(ctx: StudioContext) -> str:
    """The steps (done, running, next, to do) and the next one's hint. A step whose job is
    queued or running is the next one: the hint follows that job and never runs ahead."""
    done = progress_state(ctx)
    active = [j for j in ctx.project.list(Job) if j.status in ACTIVE]
    pills, next_hint = [], None
    for i, (key, label, kind, hint) in enumerate(STEPS, start=1):
        job = next((j for j in reversed(active) if j.kind == kind), None)
        if done[key]:
            cls, mark = "done", "✓"
        elif job is not None and next_hint is None:
            cls, mark = "running", "…"
            next_hint = running_hint(ctx, job)
        else:
            cls, mark = "todo", str(i)
            if next_hint is None:
                next_hint = hint
                cls = "next"
        pills.append(f'<span class="step {cls}"><b>{mark}</b> {label}</span>')
    if next_hint is None and any(done.values()) and all(done.values()):
        next_hint = "every step is done: compare evaluations, try another band or encoder"
    elif next_hint is None:
        next_hint = "a job is running; its progress is in the Jobs panel below"
    return (f'<div class="steps">{"".join(pills)}</div>'
            f'<div class="next-step">Next: {ui.escape(next_hint)}</div>')


def brand_html(ctx: StudioContext) -> str:
    name = ctx.project.path.stem.replace("&", "&amp;").replace("<", "&lt;")
    prof = machine_profile()
    machine = (f"GPU · {prof['gpu']}" if prof["cuda"] else f"CPU · {prof['cpus']} cores")
    return (f'<div class="brand"><span class="logo">◆</span> RCDM Studio'
            f'<span class="project" title="{ctx.project.path}">{name}</span></div>'
            f'<div class="machine">{machine.replace("<", "&lt;")}</div>')


def refresh(ctx: StudioContext) -> tuple[str, str]:
    return brand_html(ctx), header_html(ctx)


def tick(ctx: StudioContext) -> str:
    """While a job runs, its progress in the hint (the revision changes only with statuses)."""
    try:
        if any(j.status in ACTIVE for j in ctx.project.list(Job)):
            return header_html(ctx)
    except Exception:  # noqa: BLE001 - a failed tick (e.g. mid project switch) tries again
        log.debug("header tick failed", exc_info=True)
    return gr.skip()


def build(ctx: StudioContext, shared: Shared) -> gr.HTML:
    with gr.Row(elem_classes=["studio-header"]):
        with gr.Column(scale=0, min_width=300):
            brand = gr.HTML(elem_id="brand")
        with gr.Column(scale=1):
            steps = gr.HTML(elem_id="steps")
    shared.on_refresh(ui.bind(refresh, ctx), [], [brand, steps])
    gr.Timer(TICK_SECONDS).tick(ui.bind(tick, ctx), None, steps, show_progress="hidden")
    return steps
