"""Settings tab: device, model folder / hub cache and per-stage defaults, kept in the project.

The settings themselves (machine defaults, validation, the project's saved values, the hub
cache environment) are ``engine.settings``; this tab only wires its widgets to it.
Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from engine.config import SAMPLERS
from engine.paths import inside
from engine.settings import DEVICES, KEYS, PRECISIONS, effective, machine_profile, save
from studio import ui
from studio.choices import projects_root
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)


def machine_md(prof: dict[str, Any] | None = None) -> str:
    prof = prof or machine_profile()
    ram = f", {prof['ram_gb']:.0f} GB RAM" if prof["ram_gb"] else ""
    if prof["cuda"]:
        return (f"GPU: {prof['gpu']} ({prof['gpu_mem_gb']:.0f} GB){ram}, {prof['cpus']} CPU "
                f"cores · defaults sized for the GPU")
    return f"CPU only: {prof['cpus']} cores{ram} · defaults sized for a CPU (small, quick runs)"


# ---------------------------------------------------------------------- event handlers


@ui.guard(1)
def on_save(ctx: StudioContext, *values: Any) -> str:
    """Store the form (values in the order of ``engine.settings.KEYS``) in the project. When
    the studio is reachable from the network, the model folder (where the hub cache writes)
    must be inside the projects folder."""
    values_by_key = dict(zip(KEYS, values))
    folder = str(values_by_key.get("model_folder") or "").strip()
    if ctx.restrict and folder:
        root = projects_root()
        values_by_key["model_folder"] = str(inside(
            folder, root, "model folder", f"the projects folder {root}; this studio is "
                                          f"reachable from the network"))
    stored = save(ctx.project, values_by_key)
    return ui.ok_md(f"saved in {ctx.project.path.stem}: device {stored['device']}, "
                    f"{stored['train_steps']} training steps; the Train and Generate "
                    f"forms now start from them")


def form_values(ctx: StudioContext) -> tuple[Any, ...]:
    """The form's values: the project's effective settings, in the order of ``KEYS``."""
    eff = effective(ctx.project)
    return tuple(eff[k] for k in KEYS)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> dict[str, Any]:
    """The form; returns its widgets by settings key (the app fills them on load)."""
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("#### This machine", elem_classes=["section-title"])
            gr.Markdown(machine_md(), elem_id="machine-info")
            gr.Markdown("#### Compute", elem_classes=["section-title"])
            with gr.Row():
                dev = gr.Dropdown(DEVICES, label="Device", value="auto",
                                  allow_custom_value=True, elem_id="setting-device")
                prec = gr.Dropdown(PRECISIONS, label="Precision", value="fp32",
                                   elem_id="setting-precision")
            gr.Markdown("<small>auto = the GPU when there is one. Precision is recorded in the "
                        "project for the stages that support it.</small>",
                        elem_classes=["muted"])
            folder = gr.Textbox(label="Model folder (hub cache for pretrained encoders / VAE)",
                                placeholder="default: ~/.cache/huggingface",
                                elem_id="setting-model-folder")
        with gr.Column(scale=1, min_width=320):
            gr.Markdown("#### Defaults per stage", elem_classes=["section-title"])
            with gr.Row():
                t_steps = gr.Number(label="Train: steps", precision=0, minimum=1)
                t_batch = gr.Number(label="Train: batch", precision=0, minimum=1)
            with gr.Row():
                g_sampler = gr.Dropdown(list(SAMPLERS), label="Generate: sampler")
                g_steps = gr.Number(label="Generate: sampler steps", precision=0, minimum=1)
                g_var = gr.Number(label="Generate: variations", precision=0, minimum=1)
            e_epochs = gr.Number(label="Evaluate: epochs", precision=0, minimum=1)
            save_btn = gr.Button("Save settings in the project", variant="primary",
                                 elem_id="save-settings")
            status = gr.HTML(elem_id="settings-status")
    widgets = dict(zip(KEYS, (dev, prec, folder, t_steps, t_batch, g_sampler, g_steps, g_var,
                              e_epochs)))

    save_btn.click(ui.bind(on_save, ctx), list(widgets.values()), status,
                   api_name="save_settings")
    shared.on_project(ui.bind(form_values, ctx), [], list(widgets.values()))
    return widgets
