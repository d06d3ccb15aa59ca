"""Generate tab: pick a model and real images, generate seeded variations, re-encode them."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from engine.config import SAMPLERS, EncodeConfig, GenerateConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.project import Encoding, Generation, Job, Model
from studio import ui
from studio.context import StudioContext
from studio.shared import Shared
from studio.tabs import data as data_tab
from studio.tabs.train import model_choices

log = logging.getLogger(__name__)

PICK_PAGE = 40
SAMPLE_PAGE = 48
SOURCES = ["selected images", "N per class", "all training images"]


def generation_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    reencoded = {e.target_id for e in ctx.project.list(Encoding, target="generation")}
    return [(f"{g.name} · {g.count:,} images" + (" · re-encoded" if g.id in reencoded else ""),
             g.id) for g in ctx.project.list(Generation)]


def source_ids(ctx: StudioContext, model_id: str, source: str, selected: list[str],
               per_class: int) -> list[str] | None:
    """Image ids to vary (None = every training image)."""
    if source == "all training images":
        return None
    if source == "N per class":
        m = ctx.project.get(Model, model_id)
        images = ctx.project.images(m.dataset_id, split="train")
        n = int(per_class)
        if n < 1:
            raise InvalidConfigError(f"N per class must be >= 1, got {n}")
        return images.groupby("label", sort=True).head(n)["id"].tolist()
    if not selected:
        raise InvalidConfigError("no source image selected: click training images in the "
                                 "picker, or choose 'N per class'")
    return list(selected)


def generate(ctx: StudioContext, model_id: str | None, source: str, selected: list[str],
             per_class: int, variations: int, sampler: str, steps: int, guidance: float,
             seed: int, name: str | None) -> Job:
    from engine.stages import generate as generate_stage

    if not model_id:
        raise NotReadyError("the project has no trained model yet; train one in the Train tab")
    config = GenerateConfig(variations=int(variations), sampler=sampler, steps=int(steps),
                            guidance=float(guidance), seed=int(seed))
    ids = source_ids(ctx, model_id, source, selected, per_class)
    return ctx.submit(generate_stage.prepare(ctx.project, config, model_id, ids,
                                             (name or "").strip() or None))


def reencode(ctx: StudioContext, generation_id: str | None) -> Job:
    """Re-encode a generation with its model's encoder (PCA for the class baseline)."""
    from engine.stages import encode as encode_stage

    if not generation_id:
        raise NotReadyError("generate images first, then re-encode them")
    gen = ctx.project.get(Generation, generation_id)
    encoder = gen.encoder if gen.encoder and gen.encoder != "class" else "pca"
    return ctx.submit(encode_stage.prepare(ctx.project, EncodeConfig(encoder=encoder),
                                           generation_ref=gen.id))


def sample_page(ctx: StudioContext, generation_id: str | None, page: int = 1
                ) -> tuple[list[tuple[str, str]], str]:
    if not generation_id:
        return [], "No generation yet."
    gen = ctx.project.get(Generation, generation_id)
    samples = ctx.project.samples(gen.id)
    pages = max(1, -(-len(samples) // SAMPLE_PAGE))
    page = min(max(int(page), 1), pages)
    rows = samples.iloc[(page - 1) * SAMPLE_PAGE: page * SAMPLE_PAGE]
    items = [(str(ctx.project.abs(r.path)), f"{r.class_name} · seed {r.seed}")
             for r in rows.itertuples()]
    cfg = ui.loads(gen.config_json)
    reencoded = bool(ctx.project.list(Encoding, target="generation", target_id=gen.id))
    text = (f"**{gen.name}** · {gen.count:,} images · {cfg.get('variations', '?')} per source · "
            f"{cfg.get('sampler', '?')} {cfg.get('steps', '?')} steps · guidance "
            f"{cfg.get('guidance', '?')} · "
            + ("re-encoded ✓" if reencoded else "**not re-encoded yet** (needed to curate)")
            + f" · page {page} of {pages}")
    return items, text


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("#### 1 · Source images", elem_classes=["section-title"])
            model = gr.Dropdown(label="Model (trained)", choices=[], value=None,
                                allow_custom_value=True,
                                elem_id="gen-model")
            source = gr.Radio(SOURCES, value=SOURCES[0], label="Vary",
                              elem_id="gen-source")
            with gr.Row(elem_classes=["bottom-align"]):
                cls = gr.Dropdown(label="Class", choices=[data_tab.ALL], value=data_tab.ALL,
                                  allow_custom_value=True,
                                  scale=2)
                per_class = gr.Number(label="N per class", value=2, precision=0, minimum=1,
                                      scale=1)
                prev_btn = gr.Button("◀", size="sm", scale=0, min_width=40)
                page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1,
                                 min_width=60)
                next_btn = gr.Button("▶", size="sm", scale=0, min_width=40)
            picker = gr.Gallery(label="Training images: click to select / unselect", columns=10,
                                height=300, allow_preview=False, object_fit="contain",
                                elem_id="gen-picker")
            with gr.Row(elem_classes=["bottom-align"]):
                picked_info = gr.Markdown("0 images selected", elem_id="gen-picked-info")
                clear_btn = gr.Button("Clear selection", size="sm", scale=0, min_width=120)
            picked = gr.Gallery(show_label=False, columns=12, height=90, allow_preview=False,
                                object_fit="contain", fit_columns=False, elem_id="gen-picked")
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### 2 · Sampling", elem_classes=["section-title"])
            with gr.Row():
                variations = gr.Number(label="Variations per image", value=2, precision=0,
                                       minimum=1, elem_id="gen-variations")
                seed = gr.Number(label="Base seed", value=0, precision=0)
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=GenerateConfig.sampler,
                                      label="Sampler")
                steps = gr.Number(label="Steps", value=GenerateConfig.steps, precision=0,
                                  minimum=1, maximum=1000, elem_id="gen-steps")
            guidance = gr.Slider(0.0, 10.0, value=GenerateConfig.guidance, step=0.25,
                                 label="Guidance (1 = none)")
            name = gr.Textbox(label="Generation name", placeholder="default: <model>-x<k>")
            gen_btn = gr.Button("Generate", variant="primary", elem_id="gen-button")
            status = gr.HTML(elem_id="gen-status")
    gr.Markdown("#### 3 · Generations", elem_classes=["section-title"])
    with gr.Row(elem_classes=["bottom-align"]):
        generation = gr.Dropdown(label="Generation", choices=[], value=None, scale=3,
                                 allow_custom_value=True,
                                 elem_id="gen-choice")
        gen_page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=0,
                             min_width=80)
        reencode_btn = gr.Button("Re-encode for curation", variant="primary", scale=1,
                                 elem_id="reencode-button")
    gen_info = gr.Markdown(elem_id="gen-info")
    samples = gr.Gallery(show_label=False, columns=12, height=330, object_fit="contain",
                         fit_columns=False, elem_id="gen-samples")

    page_ids = gr.State([])
    selected = gr.State([])

    def model_dataset(model_id: str | None) -> str | None:
        return ctx.project.get(Model, model_id).dataset_id if model_id else None

    def show_picker(model_id, class_name, page_v):
        items, ids, p, pages = data_tab.image_page(ctx, model_dataset(model_id), class_name,
                                                   "train", int(page_v or 1), PICK_PAGE)
        return items, ids, p

    def picked_view(sel: list[str]) -> tuple[Any, str]:
        from engine.project import Image

        items = []
        for image_id in sel[:48]:
            img = ctx.project.get(Image, image_id)
            items.append((str(ctx.project.abs(img.thumb or img.path)), img.class_name))
        return items, f"**{len(sel)}** image(s) selected"

    pick_out = [picker, page_ids, page]
    model.change(lambda m: (gr.update(choices=data_tab.class_choices(ctx, model_dataset(m)),
                                      value=data_tab.ALL), *show_picker(m, data_tab.ALL, 1)),
                 model, [cls, *pick_out])
    cls.change(lambda m, c: show_picker(m, c, 1), [model, cls], pick_out)
    page.submit(show_picker, [model, cls, page], pick_out)
    prev_btn.click(lambda m, c, p: show_picker(m, c, (p or 1) - 1), [model, cls, page],
                   pick_out)
    next_btn.click(lambda m, c, p: show_picker(m, c, (p or 1) + 1), [model, cls, page],
                   pick_out)

    def toggle(ids: list[str], sel: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
        if evt.index is None or evt.index >= len(ids):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        image_id = ids[evt.index]
        sel = [s for s in sel if s != image_id] if image_id in sel else [*sel, image_id]
        return (sel, *picked_view(sel), "selected images")

    picker.select(toggle, [page_ids, selected], [selected, picked, picked_info, source])
    clear_btn.click(lambda: ([], [], "0 images selected"), None,
                    [selected, picked, picked_info])

    @ui.guard(2)
    def on_generate(model_id, source_v, sel, n, k, sampler_v, steps_v, guidance_v, seed_v,
                    name_v) -> tuple[str, Any]:
        job = generate(ctx, model_id, source_v, sel, n, k, sampler_v, steps_v, guidance_v,
                       seed_v, name_v)
        return ui.ok_md(f"{job.title}: {job.status} (progress in the Jobs panel)"), gr.skip()

    gen_btn.click(on_generate, [model, source, selected, per_class, variations, sampler, steps,
                                guidance, seed, name], [status, generation], api_name="generate")

    @ui.guard(1)
    def on_reencode(generation_id: str | None) -> str:
        job = reencode(ctx, generation_id)
        return ui.ok_md(f"{job.title}: {job.status} (progress in the Jobs panel)")

    reencode_btn.click(on_reencode, generation, status, api_name="reencode")

    def show_samples(generation_id: str | None, page_v: float | None) -> tuple[Any, str]:
        try:
            return sample_page(ctx, generation_id, int(page_v or 1))
        except Exception as exc:  # noqa: BLE001
            log.exception("generation view failed")
            return gr.skip(), ui.error_md(exc)

    generation.change(lambda g: show_samples(g, 1), generation, [samples, gen_info])
    gen_page.submit(show_samples, [generation, gen_page], [samples, gen_info])

    def refresh(model_id, generation_id):
        gens = generation_choices(ctx)
        gen_value = generation_id if generation_id in [v for _, v in gens] else \
            (gens[-1][1] if gens else None)
        items, text = sample_page(ctx, gen_value, 1) if gen_value == generation_id else \
            (gr.skip(), gr.skip())
        return (ui.dropdown(model_choices(ctx, True), model_id),
                gr.update(choices=gens, value=gen_value), items, text)

    shared.on_refresh(refresh, [model, generation], [model, generation, samples, gen_info])
