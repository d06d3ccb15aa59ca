"""Settings tab: device, model folder / hub cache and per-stage defaults, kept in the project.

Defaults come from the machine (``machine_profile``: CUDA or not, GPU and main memory) and
are overridden by what the user saved in the project (``Project.settings()``), so a project
reopened on another machine keeps its choices. The model folder sets ``HF_HOME`` /
``HF_HUB_CACHE`` of the studio process, which every worker it starts inherits.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr

from engine.config import SAMPLERS, EvalConfig, TrainConfig
from engine.errors import InvalidConfigError
from studio import ui
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

DEVICES = ["auto", "cpu", "cuda"]
PRECISIONS = ["fp32", "bf16", "fp16"]
# settings keys the form edits (all optional in the project)
KEYS = ("device", "precision", "model_folder", "train_steps", "train_batch", "gen_sampler",
        "gen_steps", "gen_variations", "eval_epochs")


@functools.lru_cache(maxsize=1)
def machine_profile() -> dict[str, Any]:
    """What this machine offers: ``{"cuda", "gpu", "gpu_mem_gb", "ram_gb", "cpus"}``."""
    import torch

    prof: dict[str, Any] = {"cuda": bool(torch.cuda.is_available()), "gpu": "",
                            "gpu_mem_gb": 0.0, "cpus": os.cpu_count() or 1, "ram_gb": 0.0}
    try:
        prof["ram_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        pass
    if prof["cuda"]:
        props = torch.cuda.get_device_properties(0)
        prof["gpu"], prof["gpu_mem_gb"] = props.name, props.total_memory / 2 ** 30
    return prof


def machine_defaults(prof: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-stage defaults sized for the machine (the engine's CPU-sized defaults on a CPU)."""
    prof = prof or machine_profile()
    d = {"device": "auto", "precision": "fp32", "model_folder": "",
         "train_steps": TrainConfig.steps, "train_batch": TrainConfig.batch_size,
         # a CPU samples with 25 DDIM steps; a GPU affords the paper's 100 DDPM steps
         "gen_sampler": "ddim", "gen_steps": 25, "gen_variations": 2,
         "eval_epochs": EvalConfig.epochs}
    if prof["cuda"]:
        mem = prof["gpu_mem_gb"]
        d["precision"] = "bf16"
        d["train_batch"] = 256 if mem >= 20 else 128
        d["train_steps"] = max(TrainConfig.steps, 5000)
        d["gen_sampler"], d["gen_steps"] = "ddpm", 100
    return d


def machine_md(prof: dict[str, Any] | None = None) -> str:
    prof = prof or machine_profile()
    ram = f", {prof['ram_gb']:.0f} GB RAM" if prof["ram_gb"] else ""
    if prof["cuda"]:
        return (f"GPU: {prof['gpu']} ({prof['gpu_mem_gb']:.0f} GB){ram}, {prof['cpus']} CPU "
                f"cores · defaults sized for the GPU")
    return f"CPU only: {prof['cpus']} cores{ram} · defaults sized for a CPU (small, quick runs)"


def effective(ctx: StudioContext) -> dict[str, Any]:
    """Machine defaults overridden by the project's saved settings."""
    out = machine_defaults()
    saved = ctx.project.settings()
    out.update({k: v for k, v in saved.items() if k in KEYS and v not in (None, "")})
    return out


def device(ctx: StudioContext) -> str:
    """The torch device jobs run on: the setting, ``auto`` -> cuda when available."""
    d = str(effective(ctx).get("device") or "auto")
    if d == "auto":
        return "cuda" if machine_profile()["cuda"] else "cpu"
    return d


def apply_environment(ctx: StudioContext) -> None:
    """Point the hub cache at the project's model folder (inherited by the workers)."""
    folder = str(effective(ctx).get("model_folder") or "").strip()
    if folder:
        os.environ["HF_HOME"] = folder
        os.environ["HF_HUB_CACHE"] = str(Path(folder) / "hub")


def save(ctx: StudioContext, values: dict[str, Any]) -> dict[str, Any]:
    """Validate and store the form's settings in the project. Returns the stored settings.

    Raises:
        InvalidConfigError: an unknown device / precision, a non-positive number, a model
            folder that is not a writable directory.
    """
    v = dict(values)
    if v.get("device") not in DEVICES and not str(v.get("device", "")).startswith("cuda:"):
        raise InvalidConfigError(f"device must be one of {DEVICES} or cuda:N, got "
                                 f"{v.get('device')!r}")
    if v["device"] != "auto" and v["device"].startswith("cuda") and \
            not machine_profile()["cuda"]:
        raise InvalidConfigError(f"device {v['device']!r}: this machine has no CUDA GPU")
    if v.get("precision") not in PRECISIONS:
        raise InvalidConfigError(f"precision must be one of {PRECISIONS}, got "
                                 f"{v.get('precision')!r}")
    if v.get("gen_sampler") not in SAMPLERS:
        raise InvalidConfigError(f"sampler must be one of {list(SAMPLERS)}, got "
                                 f"{v.get('gen_sampler')!r}")
    for key in ("train_steps", "train_batch", "gen_steps", "gen_variations", "eval_epochs"):
        n = int(v.get(key) or 0)
        if n < 1:
            raise InvalidConfigError(f"{key.replace('_', ' ')} must be >= 1, got {n}")
        v[key] = n
    folder = str(v.get("model_folder") or "").strip()
    if folder:
        p = Path(folder).expanduser()
        if not p.is_dir() or not os.access(p, os.W_OK):
            raise InvalidConfigError(f"model folder {folder!r} is not a writable directory")
        folder = str(p.absolute())
    v["model_folder"] = folder
    stored = ctx.project.update_settings(**{k: v[k] for k in KEYS})
    apply_environment(ctx)
    return stored


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

    @ui.guard(1)
    def on_save(*vals: Any) -> str:
        stored = save(ctx, dict(zip(KEYS, vals)))
        return ui.ok_md(f"saved in {ctx.project.path.stem}: device {stored['device']}, "
                        f"{stored['train_steps']} training steps; the Train and Generate "
                        f"forms now start from them")

    save_btn.click(on_save, list(widgets.values()), status, api_name="save_settings")
    shared.on_project(lambda: tuple(effective(ctx)[k] for k in KEYS), [],
                      list(widgets.values()))
    return widgets
