"""Train tab: encode the dataset (pca / class), train an RCDM, follow its loss and previews;
import a model trained elsewhere (an ``adopt`` job).

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import EncodeConfig, TrainConfig
from engine.errors import InvalidConfigError, NotReadyError, StudioError
from engine.jobs import read_progress
from engine.project import Dataset, Encoding, Job, Model, reads
from engine.settings import device, effective, machine_profile
from studio import figures, ui
from studio.choices import (
    discard_upload,
    model_choices,
    receive_zip,
    server_folder,
    studio_cache,
)
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

LIVE_SECONDS = 3.0
ENCODERS = {"pca": "PCA of pixels (offline)", "class": "class label (the Cond-LDM baseline)"}


# ---------------------------------------------------------------------- reads


def encodings_table(ctx: StudioContext, dataset_id: str | None) -> pd.DataFrame:
    cols = ["encoder", "of", "size", "id"]
    if not dataset_id:
        return pd.DataFrame(columns=cols)
    rows = []
    for e in ctx.project.list(Encoding, dataset_id=dataset_id):
        what = "dataset" if e.target == "dataset" else f"generation {e.target_id}"
        rows.append([e.encoder + (" (offline)" if e.offline else ""), what,
                     f"{e.count:,} x {e.dim}", e.id])
    return pd.DataFrame(rows, columns=cols)


def encoder_choices(ctx: StudioContext, dataset_id: str | None) -> list[tuple[str, str]]:
    if not dataset_id:
        return []
    names = []
    for e in ctx.project.list(Encoding, dataset_id=dataset_id, target="dataset"):
        if e.encoder not in names:
            names.append(e.encoder)
    return [(ENCODERS.get(n, n), n) for n in names]


def train_job(ctx: StudioContext, model_id: str) -> Job | None:
    """The (latest) training job of a model, found through its spec."""
    for job in reversed(ctx.project.list(Job, kind="train")):
        try:
            spec = json.loads((ctx.job_folder(job) / "spec.json").read_text())
        except (OSError, ValueError):
            continue
        if spec.get("params", {}).get("model_id") == model_id:
            return job
    return None


def loss_points(ctx: StudioContext, model: Model) -> list[tuple[float, float]]:
    """(step, loss) points: the saved curve of a trained model, else the live progress."""
    points = reads.model_losses(model)
    if points:
        return points
    job = train_job(ctx, model.id)
    if job is None:
        return []
    return [(float(ev["step"]), float(ev["metrics"]["loss"]))
            for ev in read_progress(ctx.job_folder(job))
            if isinstance(ev.get("metrics"), dict) and "loss" in ev["metrics"]]


def latest_preview(ctx: StudioContext, model: Model) -> str | None:
    folder = ctx.project.assets / "models" / model.id / "previews"
    files = sorted(folder.glob("step_*.png")) if folder.is_dir() else []
    return str(files[-1]) if files else None


def preview_history(ctx: StudioContext, model_id: str | None) -> list[tuple[str, str]]:
    """Every preview grid of a model, oldest first, captioned with its training step."""
    if not model_id:
        return []
    folder = ctx.project.assets / "models" / model_id / "previews"
    files = sorted(folder.glob("step_*.png")) if folder.is_dir() else []
    return [(str(f), f"step {int(f.stem.split('_')[-1]):,}") for f in files
            if f.stem.split("_")[-1].isdigit()]


def model_view(ctx: StudioContext, model_id: str | None) -> tuple[Any, Any, str]:
    """(loss figure, preview path, markdown) of a model."""
    if not model_id:
        return figures.loss_figure([], "no model yet"), None, "Train a model to see its loss curve."
    m = ctx.project.get(Model, model_id)
    cfg = m.config
    points = loss_points(ctx, m)
    steps_done = m.steps_done or (int(points[-1][0]) if points else 0)
    text = (f"**{m.name}** · conditioned on **{m.encoder}** · {m.status} · "
            f"{steps_done:,} / {cfg.get('steps', '?'):,} steps"
            if isinstance(cfg.get("steps"), int) else f"**{m.name}** · {m.status}")
    if cfg.get("channels"):
        text += " · greyscale" if int(cfg["channels"]) == 1 else " · RGB"
    if m.final_loss is not None:
        text += f" · final loss {m.final_loss:.4f}"
    text += ("  \n<small>preview: top row real training images, bottom row EMA samples "
             "conditioned on their representation</small>")
    title = f"{m.name}: loss ({points[-1][1]:.4f} at step {int(points[-1][0])})" if points \
        else f"{m.name}: waiting for the first steps"
    return figures.loss_figure(points, title), latest_preview(ctx, m), text


def compare_models(ctx: StudioContext, model_ids: list[str] | None) -> tuple[Any, Any]:
    """(loss curves overlaid, configs side by side with the differing fields first) of the
    ticked models."""
    ids = [i for i in dict.fromkeys(model_ids or []) if i]
    if not ids:
        return None, pd.DataFrame(columns=["field", "differs"])
    curves, settings = {}, {}
    for i in ids:
        m = ctx.project.get(Model, i)
        curves[m.name] = loss_points(ctx, m)
        settings[m.name] = reads.model_settings(ctx.project, m)
    return (figures.losses_figure(curves, f"{len(ids)} model(s) compared: training loss"),
            reads.config_table(settings))


# ---------------------------------------------------------------------- actions


def encode(ctx: StudioContext, dataset_id: str | None, encoder: str,
           image_size: int = TrainConfig.image_size, model_id: str | None = None) -> Job:
    from engine.stages import encode_stage

    if not dataset_id:
        raise NotReadyError("import a dataset first (Data tab)")
    if not encoder:
        raise NotReadyError("choose an encoder")
    config = EncodeConfig(encoder=encoder, image_size=image_size, device=device(ctx.project),
                          model_id=(model_id or "").strip() or None)
    twin = encode_stage.identical(ctx.project, config, dataset_id)
    if twin:
        what = (f"an identical encoding exists: {twin}; train on it (Condition on: "
                f"{encoder})" if twin.startswith("enc") else
                f"an identical encoding is being made by job: {twin}; its progress is in the "
                f"Jobs panel")
        raise InvalidConfigError(f"{what}; nothing new was queued")
    return ctx.submit(encode_stage.prepare(ctx.project, config, dataset_ref=dataset_id))


def other_encoder_choices() -> list[tuple[str, str]]:
    """The registry's encoders beyond the two buttons (PCA, class labels)."""
    from engine.encoders import available_encoders

    return [(f"{e['name']} · {'offline' if e['offline'] else 'pretrained weights'}", e["name"])
            for e in available_encoders() if e["name"] not in ("pca", "class")]


PRESET_LABELS = [("quick · the quick demo's 0.27 M-parameter U-Net, 400 steps: minutes on a "
                  "CPU", "quick"),
                 ("tiny-cpu · a 1.0 M-parameter U-Net, 1,500 steps: tens of minutes on a CPU",
                  "tiny-cpu"),
                 ("imagenet256 · the paper's 256 px latent RCDM (414M, a GPU)", "imagenet256")]
LONG_RUN_SECONDS = 30 * 60  # an estimate above this is shown as a warning


def default_preset() -> str:
    """The form's preset: ``quick`` on a machine without a GPU, ``tiny-cpu`` with one."""
    return "tiny-cpu" if machine_profile()["cuda"] else "quick"


@dataclasses.dataclass(frozen=True)
class Advanced:
    """The Train tab's advanced options (the form's accordion)."""

    preset: str = "quick"
    space: str = "pixel"  # "pixel" or "latent"
    vae_id: str = TrainConfig.vae_id
    image_size: int = TrainConfig.image_size
    min_snr_gamma: float = 0.0  # 0 = off
    cond_dropout: float = TrainConfig.cond_dropout
    grad_accum: int = 1
    processes: int = 1  # data-parallel processes (one per GPU), torchrun under the job
    channels: str = "auto"  # "auto" (follow the data), "1" (greyscale) or "3" (RGB)


CHANNEL_CHOICES = [("follow the data", "auto"), ("greyscale", "1"), ("RGB", "3")]


def channels_value(value: str | None) -> int | None:
    """The form's channels -> TrainConfig.channels (None: the training images decide)."""
    value = str(value or "auto")
    if value not in {v for _, v in CHANNEL_CHOICES}:
        raise InvalidConfigError(f"channels must be auto, 1 or 3, got {value!r}")
    return None if value == "auto" else int(value)


def preset_form(name: str, num_images: int | None = None) -> dict[str, Any]:
    """The form values preset ``name`` fills in: steps, batch, lr and the advanced fields."""
    from engine.rcdm.presets import preset_config

    c = preset_config(name or default_preset(), num_images=num_images)
    return {"steps": c.steps, "batch_size": c.batch_size, "learning_rate": c.learning_rate,
            "space": c.space, "vae_id": c.vae_id, "image_size": c.image_size,
            "min_snr_gamma": c.min_snr_gamma or 0.0, "cond_dropout": c.cond_dropout,
            "grad_accum": c.grad_accum}


def train_config(ctx: StudioContext, steps: int, batch_size: int, lr: float,
                 advanced: Advanced | None = None, num_images: int | None = None) -> TrainConfig:
    """The studio's training config: the preset's architecture, the form's values over it,
    the project's device and precision, previews / checkpoints / warm-up scaled to the run
    (a 60-step run is fine).

    Raises:
        InvalidConfigError: bad values, or the GPU-sized preset on a CPU.
    """
    from engine.rcdm.presets import EPOCHS, preset_config

    adv = advanced or Advanced()
    steps = int(steps or 0)
    if steps < 1:
        raise InvalidConfigError(f"steps must be >= 1, got {steps}")
    dev = device(ctx.project)
    preset = adv.preset or default_preset()
    base = preset_config(preset, num_images=num_images)  # refuses an unknown preset
    if base.device.startswith("cuda") and not dev.startswith("cuda"):
        raise InvalidConfigError(
            f"the {preset} preset is sized for a GPU; choose a CUDA device in Settings, or "
            f"the quick or tiny-cpu preset on this machine")
    extra: dict[str, Any] = {}
    prec = str(effective(ctx.project).get("precision") or "fp32")
    # fp16/bf16 autocast needs a GPU here; CPU runs stay fp32
    extra["precision"] = prec if dev.startswith("cuda") else "fp32"
    if adv.space == "latent":
        from engine.rcdm.latent import check_vae

        check_vae((adv.vae_id or "").strip() or TrainConfig.vae_id)
    gamma = float(adv.min_snr_gamma or 0.0)
    # a preset of its own schedule (sized in epochs) keeps it; a short CPU run gets its own
    scaled = {} if preset in EPOCHS else dict(
        # a preview grid every fifth of the run (at least 100 steps apart: each one
        # samples), a checkpoint every third; both within the run
        preview_every=min(TrainConfig.preview_every, max(min(100, steps), steps // 5)),
        checkpoint_every=min(TrainConfig.checkpoint_every, max(min(50, steps), steps // 3)),
        warmup_steps=min(TrainConfig.warmup_steps, max(1, steps // 10)))
    return base.replace(
        steps=steps, batch_size=int(batch_size), learning_rate=float(lr), device=dev,
        space=adv.space or "pixel", vae_id=(adv.vae_id or "").strip() or TrainConfig.vae_id,
        image_size=int(adv.image_size or 0), min_snr_gamma=gamma if gamma > 0 else None,
        cond_dropout=float(adv.cond_dropout), grad_accum=int(adv.grad_accum or 0),
        processes=int(adv.processes or 0), channels=channels_value(adv.channels), **scaled,
        **extra)


def train(ctx: StudioContext, dataset_id: str | None, encoder: str | None, steps: int,
          batch_size: int, lr: float, name: str | None,
          advanced: Advanced | None = None) -> tuple[Job, Model]:
    from engine.stages import train_stage

    if not dataset_id:
        raise NotReadyError("import a dataset first (Data tab)")
    if not encoder:
        raise NotReadyError("encode the dataset first (PCA button above)")
    ds = ctx.project.get(Dataset, dataset_id)
    config = train_config(ctx, steps, batch_size, lr, advanced, num_images=ds.num_train)
    spec = train_stage.prepare(ctx.project, config, dataset_id, encoder=encoder,
                               name=(name or "").strip() or None)
    job = ctx.submit(spec)
    return job, ctx.project.get(Model, spec.params["model_id"])


def cond_dim(ctx: StudioContext, dataset_id: str | None, encoder: str | None) -> int:
    """Width of the representations a model of ``encoder`` would be conditioned on (the
    dataset's latest encoding with it; 32, the PCA's, before there is one)."""
    if dataset_id and encoder:
        encs = ctx.project.list(Encoding, dataset_id=dataset_id, target="dataset",
                                encoder=encoder)
        if encs and encs[-1].dim:
            return int(encs[-1].dim)
    return 32


def time_estimate(ctx: StudioContext, dataset_id: str | None, encoder: str | None, steps: int,
                  batch_size: int, lr: float, advanced: Advanced | None = None) -> str:
    """Markdown: how long the form's run takes on this machine, from a few real training
    steps of its model (``engine.rcdm.calibration``: measured once per machine and model
    size, about a second for the quick preset, then read from the studio's cache), with a
    warning above ``LONG_RUN_SECONDS``.

    Raises:
        InvalidConfigError: the form's values are refused (the same sentence Train gives).
    """
    from engine.rcdm import calibration

    adv = advanced or Advanced()
    if adv.space == "latent":
        return "<small>No time estimate for VAE latents: their encoding is not timed.</small>"
    n = ctx.project.get(Dataset, dataset_id).num_train if dataset_id else None
    config = train_config(ctx, steps, batch_size, lr, adv, num_images=n)
    why = calibration.calibratable(config)
    if why:
        return f"<small>{why.capitalize()}.</small>"
    per_step, _ = calibration.seconds_per_step(
        config, cond_dim(ctx, dataset_id, encoder), studio_cache() / "step_times.json")
    total = calibration.estimate(config, per_step)
    how = (f"{config.steps:,} steps × {per_step:.2f} s per step, measured on this machine "
           f"with {calibration.CALIBRATION_STEPS} steps of this model; previews and "
           f"checkpoints included")
    if total > LONG_RUN_SECONDS:
        return (f'<div class="status-warn">⚠ Estimated time on this machine: '
                f"<b>about {ui.duration(total)}</b>, a long run. The quick preset, fewer "
                f"steps or a smaller batch take less.<br><small>{how}</small></div>")
    return (f"Estimated time on this machine: **about {ui.duration(total)}**  \n"
            f"<small>{how}</small>")


def adopt_encoding_choices(ctx: StudioContext, dataset_id: str | None
                           ) -> list[tuple[str, str]]:
    """The dataset's encodings a model trained elsewhere can be tied to, newest first."""
    if not dataset_id:
        return []
    encs = ctx.project.list(Encoding, dataset_id=dataset_id, target="dataset")
    return [(f"{e.encoder} · {e.dim}-d · {e.id}", e.id) for e in reversed(encs)]


def import_model(ctx: StudioContext, dataset_id: str | None, folder: str | None,
                 zip_path: str | None, encoding_id: str | None, vae_id: str | None = None,
                 name: str | None = None) -> Job:
    """Queue the import of a model trained elsewhere (an ``adopt`` job): a folder inside the
    projects folder, or an uploaded zip of it (``receive_zip``: checked and copied into the
    project's ``uploads/``, which the job removes). The copy and the load run in the job.

    Raises:
        NotReadyError: no dataset or encoding; InvalidConfigError: no folder, both, or a
        folder outside the projects folder; UnsafeArchiveError: a bad zip;
        SignInRequiredError / QuotaError (a public studio).
    """
    from engine.stages import adopt_stage

    if not dataset_id:
        raise NotReadyError("import a dataset first (Data tab)")
    ctx.access.check_write(ctx.editor, "import a model")
    folder_text = (folder or "").strip()
    if zip_path and folder_text:
        raise InvalidConfigError("give either a model folder or a .zip of it, not both")
    if not zip_path and not folder_text:
        raise InvalidConfigError("give the model's folder inside the projects folder, or "
                                 "upload a .zip of it")
    if not encoding_id:
        raise NotReadyError("choose the encoding the model was trained on (encode the dataset "
                            "first)")
    args = dict(dataset_ref=dataset_id, encoding_ref=encoding_id,
                name=(name or "").strip() or None, vae_id=(vae_id or "").strip() or None)
    if not zip_path:
        path = server_folder(ctx, folder_text, "model folder", read=True)
        return ctx.submit(adopt_stage.prepare(ctx.project, path, **args))
    tmp, archive = receive_zip(ctx, zip_path, "the model folder", "import a model",
                               adopt_stage.MAX_ZIP_BYTES, adopt_stage.MAX_ZIP_FILES)
    try:
        return ctx.submit(adopt_stage.prepare(ctx.project, None, cleanup=tmp, archive=archive,
                                              **args))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------------- event handlers


def submitted(job: Job) -> str:
    return ui.ok_md(f"{job.title} submitted ({job.status}); follow it in the Jobs panel below")


@ui.guard(2)
def on_encode(ctx: StudioContext, dataset_id: str | None, which: str) -> tuple[str, Any]:
    job = encode(ctx, dataset_id, which)
    return submitted(job), encodings_table(ctx, dataset_id)


def on_encode_pca(ctx: StudioContext, dataset_id: str | None) -> tuple[str, Any]:
    return on_encode(ctx, dataset_id, "pca")


def on_encode_class(ctx: StudioContext, dataset_id: str | None) -> tuple[str, Any]:
    return on_encode(ctx, dataset_id, "class")


@ui.guard(2)
def on_encode_other(ctx: StudioContext, dataset_id: str | None, which: str | None,
                    model_id_v: str | None) -> tuple[str, Any]:
    job = encode(ctx, dataset_id, which or "", model_id=model_id_v)
    return submitted(job), encodings_table(ctx, dataset_id)


@ui.guard(1)
def on_import_model(ctx: StudioContext, dataset_id, folder_v, zip_v, encoding_v, vae_v,
                    name_v) -> str:
    try:
        job = import_model(ctx, dataset_id, folder_v, zip_v, encoding_v, vae_v, name_v)
    finally:  # copied into the project (or refused): the upload itself is no longer needed
        discard_upload(zip_v)
    return ui.ok_md(f"{job.title}: queued; follow it in the Jobs panel below (the model "
                    f"appears in the Model list when it is done)")


def refresh_adopt(ctx: StudioContext, dataset_id: str | None, encoding_id: str | None) -> Any:
    """The import form's encodings (the chosen one stays while it is there)."""
    return ui.dropdown(adopt_encoding_choices(ctx, dataset_id), encoding_id, prefer_last=False)


def advanced_form(preset_v=None, space_v="pixel", size_v=TrainConfig.image_size,
                  vae_v=TrainConfig.vae_id, snr_v=0.0, dropout_v=TrainConfig.cond_dropout,
                  accum_v=1, procs_v=1, channels_v="auto") -> Advanced:
    """The accordion's widgets as an Advanced."""
    return Advanced(preset=preset_v or default_preset(), space=space_v or "pixel",
                    vae_id=vae_v or "", image_size=int(size_v or 0),
                    min_snr_gamma=float(snr_v or 0.0), cond_dropout=float(dropout_v or 0.0),
                    grad_accum=int(accum_v or 0), processes=int(procs_v or 0),
                    channels=str(channels_v or "auto"))


@ui.guard(2)
def on_train(ctx: StudioContext, dataset_id, enc, steps_v, batch_v, lr_v, name_v,
             preset_v=None, space_v="pixel", size_v=TrainConfig.image_size,
             vae_v=TrainConfig.vae_id, snr_v=0.0, dropout_v=TrainConfig.cond_dropout, accum_v=1,
             procs_v=1, channels_v="auto") -> tuple[str, Any]:
    adv = advanced_form(preset_v, space_v, size_v, vae_v, snr_v, dropout_v, accum_v, procs_v,
                        channels_v)
    job, m = train(ctx, dataset_id, enc, steps_v, batch_v, lr_v, name_v, adv)
    return submitted(job), ui.dropdown(model_choices(ctx), m.id)


def on_estimate(ctx: StudioContext, dataset_id, enc, steps_v, batch_v, lr_v, name_v,
                preset_v=None, space_v="pixel", size_v=TrainConfig.image_size,
                vae_v=TrainConfig.vae_id, snr_v=0.0, dropout_v=TrainConfig.cond_dropout,
                accum_v=1, procs_v=1, channels_v="auto") -> str:
    """The form's time estimate (the Train form's inputs); a refused value says why."""
    try:
        adv = advanced_form(preset_v, space_v, size_v, vae_v, snr_v, dropout_v, accum_v,
                            procs_v, channels_v)
        return time_estimate(ctx, dataset_id, enc, steps_v, batch_v, lr_v, adv)
    except Exception as exc:  # noqa: BLE001 - an estimate never breaks the form
        if not isinstance(exc, StudioError):
            log.exception("time estimate failed")
        return f"<small>No time estimate: {ui.escape(ui.error_text(exc))}</small>"


def on_preset(ctx: StudioContext, name_v: str | None, dataset_id: str | None
              ) -> tuple[Any, ...]:
    """The form values of a preset (sized for the dataset)."""
    n = ctx.project.get(Dataset, dataset_id).num_train if dataset_id else None
    f = preset_form(name_v or default_preset(), n)
    return (f["steps"], f["batch_size"], f["learning_rate"], f["space"], f["image_size"],
            f["vae_id"], f["min_snr_gamma"], f["cond_dropout"], f["grad_accum"])


def show_model(ctx: StudioContext, model_id: str | None) -> tuple[Any, Any, str]:
    try:
        return model_view(ctx, model_id)
    except Exception as exc:  # noqa: BLE001
        log.exception("model view failed")
        return gr.skip(), gr.skip(), ui.error_md(exc)


def live(ctx: StudioContext, model_id: str | None) -> tuple[Any, Any, Any]:
    """The model's view while it trains (the timer's tick); nothing otherwise."""
    if not model_id:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        m = ctx.project.get(Model, model_id)
    except Exception:  # noqa: BLE001
        return gr.skip(), gr.skip(), gr.skip()
    if m.status not in ("queued", "training"):
        return gr.skip(), gr.skip(), gr.skip()
    return show_model(ctx, model_id)


def refresh(ctx: StudioContext, dataset_id: str | None, enc: str | None,
            model_id: str | None) -> tuple[Any, Any, Any, Any, Any, Any]:
    choices = encoder_choices(ctx, dataset_id)
    values = [v for _, v in choices]
    enc_value = enc if enc in values else ("pca" if "pca" in values else
                                           (values[0] if values else None))
    fig, prev, text = model_view(ctx, model_id) if model_id else (gr.skip(),) * 3
    return (encodings_table(ctx, dataset_id), gr.update(choices=choices, value=enc_value),
            ui.dropdown(model_choices(ctx), model_id), fig, prev, text)


def show_compare(ctx: StudioContext, model_ids: list[str] | None) -> tuple[Any, Any]:
    try:
        fig, table = compare_models(ctx, model_ids)
        return fig, figures.config_styled(table)
    except Exception as exc:  # noqa: BLE001 - shown as a toast, the views keep their values
        log.exception("compare failed")
        gr.Warning(ui.error_text(exc))
        return gr.skip(), gr.skip()


def refresh_compare(ctx: StudioContext, model_ids: list[str] | None) -> tuple[Any, Any, Any]:
    """The models to tick (those still there stay ticked) and their comparison."""
    choices = model_choices(ctx)
    ticked = [i for i in (model_ids or []) if i in [v for _, v in choices]]
    fig, table = compare_models(ctx, ticked)
    return gr.update(choices=choices, value=ticked), fig, figures.config_styled(table)


def defaults(ctx: StudioContext) -> tuple[int, int]:
    """The form's defaults from the project's settings: steps, batch."""
    eff = effective(ctx.project)
    return int(eff["train_steps"]), int(eff["train_batch"])


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    dataset = shared.dataset
    with gr.Row():
        with gr.Column(scale=2, min_width=340):
            gr.Markdown("#### 1 · Representations", elem_classes=["section-title"])
            with gr.Row():
                enc_pca = gr.Button("Encode with PCA", variant="primary", elem_id="encode-pca")
                enc_cls = gr.Button("Encode class labels", elem_id="encode-class")
            gr.Markdown("<small>PCA of pixels is the offline encoder (no download); class "
                        "labels give the class-conditioned baseline.</small>")
            with gr.Accordion("Other encoders: learned offline (simclr), DINOv2, DINOv3, CLIP",
                              open=False, elem_id="encode-other-panel"):
                others = other_encoder_choices()
                names = [v for _, v in others]
                with gr.Row(elem_classes=["bottom-align"]):
                    other = gr.Dropdown(label="Encoder", choices=others,
                                        value="simclr" if "simclr" in names else None,
                                        scale=2, elem_id="encode-other-name")
                    model_id = gr.Textbox(label="Weights: hub id or local folder",
                                          placeholder="empty: the paper's model", scale=3,
                                          elem_id="encode-model-id")
                    enc_other = gr.Button("Encode", scale=1, elem_id="encode-other")
                gr.Markdown("<small>Pretrained weights come from the hub cache (the model "
                            "folder in Settings); offline, download them first and give "
                            "their folder. simclr trains a small encoder on your images "
                            "(about a minute per 1,000 images on a CPU).</small>")
            encs = gr.Dataframe(label="Encodings", interactive=False, max_height=180)
            gr.Markdown("#### 2 · Train an RCDM", elem_classes=["section-title"])
            encoder = gr.Dropdown(label="Condition on", choices=[], value=None,
                                  allow_custom_value=True,
                                  elem_id="train-encoder")
            with gr.Row():
                start = preset_form(default_preset())
                steps = gr.Number(label="Steps", value=start["steps"], precision=0,
                                  minimum=1, elem_id="train-steps")
                batch = gr.Number(label="Batch", value=start["batch_size"], precision=0,
                                  minimum=1, elem_id="train-batch")
                lr = gr.Number(label="Learning rate", value=TrainConfig.learning_rate,
                               minimum=1e-6)
            with gr.Accordion("Advanced: preset, latent space, loss", open=False,
                              elem_id="train-advanced"):
                preset = gr.Dropdown(PRESET_LABELS, value=default_preset(), label="Preset",
                                     elem_id="train-preset")
                with gr.Row():
                    space = gr.Radio([("pixels", "pixel"), ("VAE latents", "latent")],
                                     value="pixel", label="Denoise", elem_id="train-space")
                    image_size = gr.Number(label="Image size (px)", value=TrainConfig.image_size,
                                           precision=0, minimum=8, elem_id="train-image-size")
                    channels = gr.Radio(CHANNEL_CHOICES, value="auto", label="Channels",
                                        elem_id="train-channels")
                vae = gr.Textbox(label="VAE: hub id or local folder (latent space)",
                                 value=TrainConfig.vae_id, elem_id="train-vae")
                with gr.Row():
                    min_snr = gr.Number(label="Min-SNR γ (0 = off)", value=0.0, minimum=0.0,
                                        elem_id="train-min-snr")
                    dropout = gr.Number(label="Condition dropout (for guidance)",
                                        value=TrainConfig.cond_dropout, minimum=0.0,
                                        maximum=0.99, elem_id="train-cond-dropout")
                    accum = gr.Number(label="Gradient accumulation", value=1, precision=0,
                                      minimum=1, elem_id="train-grad-accum")
                    procs = gr.Number(label="Processes (GPUs)", value=1, precision=0,
                                      minimum=1, elem_id="train-processes")
                gr.Markdown("<small>Latent space needs a diffusers AutoencoderKL (the Stable "
                            "Diffusion VAE by default: a hub id in the cache, or its folder); "
                            "its latents are computed once and cached. The batch is the whole "
                            "step's batch, split into processes and accumulation micro-batches; "
                            "with several processes the job runs them under torchrun and "
                            "holds that many GPUs of the queue.</small>")
            name = gr.Textbox(label="Model name", placeholder="default: rcdm-<encoder>")
            estimate = gr.Markdown(elem_id="train-estimate")
            train_btn = gr.Button("Train", variant="primary", elem_id="train-button")
            status = gr.HTML(elem_id="train-status")
            with gr.Accordion("Import a model trained elsewhere", open=False,
                              elem_id="adopt-panel"):
                adopt_folder = gr.Textbox(
                    label="Model folder (inside the projects folder)",
                    placeholder="e.g. incoming/hub-rcdm", elem_id="adopt-folder")
                adopt_zip = gr.File(label="…or a .zip of the model folder", file_types=[".zip"],
                                    type="filepath", height=110, elem_id="adopt-zip")
                adopt_enc = gr.Dropdown(label="Encoding it was trained on", choices=[],
                                        value=None, allow_custom_value=True,
                                        elem_id="adopt-encoding")
                with gr.Row():
                    adopt_vae = gr.Textbox(label="VAE: hub id or folder (latent models only)",
                                           placeholder="empty: a pixel model",
                                           elem_id="adopt-vae")
                    adopt_name = gr.Textbox(label="Model name",
                                            placeholder="default: imported-<encoder>",
                                            elem_id="adopt-name")
                gr.Markdown("<small>A folder of this studio's format (rcdm.json) or a "
                            "diffusers UNet2DConditionModel (unet/) beside its "
                            "conditioner.safetensors. It is copied into the project and loaded "
                            "once in a job; the representation sizes of the model and the "
                            "encoding must agree.</small>")
                adopt_btn = gr.Button("Import model", elem_id="adopt-button")
                adopt_status = gr.HTML(elem_id="adopt-status")
        with gr.Column(scale=3):
            model = gr.Dropdown(label="Model", choices=[], value=None, allow_custom_value=True,
                                elem_id="model-choice")
            info = gr.Markdown(elem_id="model-info")
            plot = gr.Plot(show_label=False, elem_id="loss-plot")
            gr.Markdown("Latest preview", elem_classes=["image-caption"])
            preview = gr.Image(show_label=False, height=170, interactive=False,
                               buttons=["fullscreen"], elem_id="train-preview")
            with gr.Accordion("Previews over training", open=False,
                              elem_id="train-previews-panel"):
                history = gr.Gallery(show_label=False, columns=1, height="auto",
                                     object_fit="contain", elem_id="train-previews",
                                     elem_classes=["preview-history"])
            with gr.Accordion("Compare models: loss curves overlaid, configs side by side",
                              open=False, elem_id="model-compare-panel"):
                compared = gr.Dropdown(label="Models to compare", choices=[], value=[],
                                       multiselect=True, elem_id="model-compare")
                compare_plot = gr.Plot(show_label=False, elem_id="model-compare-plot")
                compare_table = gr.Dataframe(interactive=False, max_height=360, wrap=True,
                                             label="Configs side by side (fields that differ "
                                                   "first, ≠)", elem_id="model-compare-table")

    form = [dataset, encoder, steps, batch, lr, name, preset, space, image_size, vae, min_snr,
            dropout, accum, procs, channels]
    model_out = [plot, preview, info]
    lists = [encs, encoder, model, plot, preview, info]

    enc_pca.click(ui.bind(on_encode_pca, ctx), dataset, [status, encs])
    enc_cls.click(ui.bind(on_encode_class, ctx), dataset, [status, encs])
    enc_other.click(ui.bind(on_encode_other, ctx), [dataset, other, model_id], [status, encs],
                    api_name="encode_other")
    train_btn.click(ui.bind(on_train, ctx), form, [status, model], api_name="train")
    preset.change(ui.bind(on_preset, ctx), [preset, dataset],
                  [steps, batch, lr, space, image_size, vae, min_snr, dropout, accum],
                  show_progress="hidden")
    # the estimate follows the form (a cache read; the first time a model size is seen,
    # a few timed training steps)
    gr.on([c.change for c in form if c is not name], ui.bind(on_estimate, ctx), form, estimate,
          show_progress="hidden", trigger_mode="always_last")
    model.change(ui.bind(show_model, ctx), model, model_out, show_progress="hidden")
    # a new preview grid (or another model) redraws the history of grids
    preview.change(ui.bind(preview_history, ctx), model, history, show_progress="hidden")
    gr.Timer(LIVE_SECONDS).tick(ui.bind(live, ctx), model, model_out, show_progress="hidden")
    shared.on_refresh(ui.bind(refresh, ctx), [dataset, encoder, model], lists)
    shared.on_project(ui.bind(defaults, ctx), [], [steps, batch])
    dataset.change(ui.bind(refresh, ctx), [dataset, encoder, model], lists)
    compared.input(ui.bind(show_compare, ctx), compared, [compare_plot, compare_table],
                   show_progress="hidden", trigger_mode="always_last")  # the last tick wins
    adopt_btn.click(ui.bind(on_import_model, ctx),
                    [dataset, adopt_folder, adopt_zip, adopt_enc, adopt_vae, adopt_name],
                    adopt_status, api_name="import_model").then(
        lambda: None, None, adopt_zip, api_visibility="private")  # the upload is gone: clear it
    shared.on_refresh(ui.bind(refresh_adopt, ctx), [dataset, adopt_enc], [adopt_enc])
    dataset.change(ui.bind(refresh_adopt, ctx), [dataset, adopt_enc], adopt_enc)
    shared.on_refresh(ui.bind(refresh_compare, ctx), [compared],
                      [compared, compare_plot, compare_table])
