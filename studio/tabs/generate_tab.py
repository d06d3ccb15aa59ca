"""Generate tab: pick a model and real images, generate from their representations, re-encode.

The representations are the chosen images' own (seeded variations: the paper's), points on
the path between two chosen images, mix-ups within each class, or new draws from each
class's fitted distribution (``GenerateConfig.mode``).
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from engine.config import COVARIANCES, SAMPLERS, EncodeConfig, GenerateConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.project import Encoding, Generation, Job, Model
from studio import ui
from studio.context import StudioContext
from studio.shared import Shared
from studio.tabs import data_tab
from studio.tabs.train_tab import model_choices

log = logging.getLogger(__name__)

PICK_PAGE = 40
SAMPLE_PAGE = 48
SOURCES = ["selected images", "N per class", "all training images"]
# (label, GenerateConfig.mode): what the model is conditioned on
MODES = [("variations of each image (the paper's)", "variations"),
         ("interpolation between two selected images", "interpolate"),
         ("mix-ups of two images of a class", "mixup"),
         ("new draws from each class's distribution", "class_sample")]
MODE_HINTS = {
    "variations": "Each source image's own representation, with <b>k</b> seeds each.",
    "interpolate": "Select exactly <b>two</b> images (in order): <b>points</b> "
                   "representations on the path between theirs (spherical when they are unit "
                   "vectors), <b>k</b> seeds each.",
    "mixup": "Pairs of images of the same class from the source images, mixed with a weight "
             "~ Beta(α, α): <b>new per class</b> representations per class, <b>k</b> seeds "
             "each.",
    "class_sample": "A Gaussian fitted to each class's representations among the source "
                    "images: <b>new per class</b> draws per class, <b>k</b> seeds each. Goes "
                    "beyond the real images.",
}


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
             seed: int, name: str | None, mode: str = "variations", points: int = 8,
             new_per_class: int = 10, mix_alpha: float = 1.0,
             covariance: str = "ledoit_wolf") -> Job:
    from engine.stages import generate_stage

    if not model_id:
        raise NotReadyError("the project has no trained model yet; train one in the Train tab")
    from studio.tabs.settings_tab import device

    mode = mode or "variations"
    if mode == "interpolate" and len(selected or []) != 2:
        raise InvalidConfigError(f"interpolation needs exactly two selected images (click two "
                                 f"in the picker); {len(selected or [])} selected")
    config = GenerateConfig(variations=int(variations), sampler=sampler, steps=int(steps),
                            guidance=float(guidance), seed=int(seed), device=device(ctx),
                            mode=mode, points=int(points or 0),
                            per_class=int(new_per_class or 0), mix_alpha=float(mix_alpha or 0),
                            covariance=covariance or "ledoit_wolf")
    ids = list(selected) if mode == "interpolate" else \
        source_ids(ctx, model_id, source, selected, per_class)
    return ctx.submit(generate_stage.prepare(ctx.project, config, model_id, ids,
                                             (name or "").strip() or None))


def reencode(ctx: StudioContext, generation_id: str | None) -> Job:
    """Re-encode a generation with its model's encoder (PCA for the class baseline)."""
    from engine.stages import encode_stage

    if not generation_id:
        raise NotReadyError("generate images first, then re-encode them")
    gen = ctx.project.get(Generation, generation_id)
    encoder = gen.encoder if gen.encoder and gen.encoder != "class" else "pca"
    from studio.tabs.settings_tab import device

    return ctx.submit(encode_stage.prepare(ctx.project,
                                           EncodeConfig(encoder=encoder, device=device(ctx)),
                                           generation_ref=gen.id))


def sample_page(ctx: StudioContext, generation_id: str | None, page: int = 1,
                page_size: int = SAMPLE_PAGE) -> tuple[list[tuple[str, str]], str, list[str], int]:
    """One page of a generation's samples, read with one ``LIMIT`` query.

    Returns:
        (gallery items [(path, caption)], markdown, their sample ids, page (clamped)).
    """
    if not generation_id:
        return [], "No generation yet.", [], 1
    gen = ctx.project.get(Generation, generation_id)
    total = int(ctx.project.query("SELECT count(*) FROM sample WHERE generation_id = ?",
                                  [gen.id]).iloc[0, 0])
    pages = max(1, -(-total // page_size))
    page = min(max(int(page or 1), 1), pages)
    rows = ctx.project.query(
        "SELECT id, path, class_name, seed FROM sample WHERE generation_id = ? ORDER BY idx "
        "LIMIT ? OFFSET ?", [gen.id, page_size, (page - 1) * page_size])
    items = [(ui.gallery_path(ctx.project.abs(r.path)), f"{r.class_name}")
             for r in rows.itertuples()]
    cfg = ui.loads(gen.config_json)
    reencoded = bool(ctx.project.list(Encoding, target="generation", target_id=gen.id))
    mode = (cfg.get("conditions") or {}).get("mode", cfg.get("mode", "variations"))
    what = "" if mode == "variations" else f"{dict((v, k) for k, v in MODES).get(mode, mode)} · "
    k = cfg.get("variations", "?")
    text = (f"**{gen.name}** · {gen.count:,} images · {what}{k} "
            f"seed{'' if k == 1 else 's'} per representation · "
            f"{cfg.get('sampler', '?')} {cfg.get('steps', '?')} steps · guidance "
            f"{cfg.get('guidance', '?')} · "
            + ("re-encoded ✓" if reencoded else "**not re-encoded yet** (needed to curate)")
            + f" · page {page} of {pages}")
    return items, text, rows["id"].tolist(), page


def _plan_row(ctx: StudioContext, gen: Generation, idx: int) -> dict[str, Any]:
    """The plan columns (mode, cond_index, partner_image_id, weight) of sample ``idx``, read
    from the generation's ``samples.parquet``; {} for generations written before plans."""
    path = ctx.project.abs(gen.folder) / "samples.parquet"
    if not path.exists():
        return {}
    try:
        rows = ctx.project.query(
            "SELECT * FROM read_parquet(?) WHERE idx = ? LIMIT 1", [str(path), int(idx)])
    except Exception:  # noqa: BLE001 - provenance is a courtesy; the rest still shows
        log.exception("cannot read %s", path)
        return {}
    return rows.iloc[0].to_dict() if len(rows) else {}


def sample_details(ctx: StudioContext, sample_id: str) -> tuple[str, str]:
    """(path of the generated image, markdown provenance: source image, model, seed...)."""
    from engine.project import Image, Sample

    s = ctx.project.get(Sample, sample_id)
    gen = ctx.project.get(Generation, s.generation_id)
    model = ctx.project.get(Model, gen.model_id) if getattr(gen, "model_id", "") else None
    lines = [f"**{s.class_name}** · seed {s.seed} · {s.sampler} {s.steps} steps · "
             f"guidance {s.guidance:g}",
             f"generation **{gen.name}**" + (f" · model **{model.name}** ({model.encoder})"
                                              if model else "")]
    plan = _plan_row(ctx, gen, s.idx)
    mode = plan.get("mode", "variations")

    def describe(image_id: str) -> str:
        try:
            img = ctx.project.get(Image, image_id)
            return f"{img.id} ({img.class_name}, {img.source_path or img.path})"
        except Exception:  # noqa: BLE001 - a vanished source still shows the rest
            return f"{image_id} (no longer in the project)"

    partner, weight = plan.get("partner_image_id") or "", float(plan.get("weight") or 0.0)
    if mode == "interpolate":
        lines.append(f"interpolation at t = {weight:.3f} from real image "
                     f"{describe(s.source_image_id)} to {describe(partner)}")
    elif mode == "mixup":
        lines.append(f"mix-up of real images {describe(s.source_image_id)} and "
                     f"{describe(partner)}, weight {weight:.3f} on the second")
    elif mode == "class_sample":
        lines.append(f"new representation drawn from the distribution of class "
                     f"{s.class_name} (representation {plan.get('cond_index', '?')})")
    elif s.source_image_id:
        lines.append(f"variation of real image {describe(s.source_image_id)}")
    lines.append(f"<small>sample {s.id}<br>file {s.path}</small>")
    return str(ctx.project.abs(s.path)), "  \n".join(lines)


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
            picked = gr.Gallery(show_label=False, columns=12, height=112, allow_preview=False,
                                object_fit="contain", fit_columns=False, elem_id="gen-picked")
        with gr.Column(scale=2, min_width=320):
            gr.Markdown("#### 2 · Representations and sampling",
                        elem_classes=["section-title"])
            mode = gr.Dropdown(MODES, value="variations", label="Representations",
                               elem_id="gen-mode")
            mode_hint = gr.HTML(f"<small>{MODE_HINTS['variations']}</small>",
                                elem_id="gen-mode-hint")
            with gr.Row(visible=False) as mode_row:
                points = gr.Number(label="Points on the path", value=GenerateConfig.points,
                                   precision=0, minimum=2, visible=False, elem_id="gen-points")
                new_per_class = gr.Number(label="New per class", value=GenerateConfig.per_class,
                                          precision=0, minimum=1, visible=False,
                                          elem_id="gen-new-per-class")
                mix_alpha = gr.Number(label="Mix-up α", value=GenerateConfig.mix_alpha,
                                      minimum=0.01, visible=False, elem_id="gen-mix-alpha")
                covariance = gr.Dropdown(list(COVARIANCES), value=GenerateConfig.covariance,
                                         label="Covariance", visible=False,
                                         elem_id="gen-covariance")
            with gr.Row():
                variations = gr.Number(label="Seeds per representation (k)", value=2,
                                       precision=0, minimum=1, elem_id="gen-variations")
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
        gen_prev = gr.Button("◀", size="sm", scale=0, min_width=40, elem_id="gen-prev")
        gen_page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=0,
                             min_width=80, elem_id="gen-page")
        gen_next = gr.Button("▶", size="sm", scale=0, min_width=40, elem_id="gen-next")
        reencode_btn = gr.Button("Re-encode for curation", variant="primary", scale=1,
                                 elem_id="reencode-button")
    gen_info = gr.Markdown(elem_id="gen-info")
    with gr.Row():
        samples = gr.Gallery(show_label=False, columns=12, height=330, object_fit="contain",
                             allow_preview=False, fit_columns=False, elem_id="gen-samples",
                             scale=4)
        with gr.Column(scale=1, min_width=220):
            gr.Markdown("Selected sample", elem_classes=["image-caption"])
            sample_img = gr.Image(show_label=False, height=160, interactive=False,
                                  buttons=[], elem_id="sample-detail")
            sample_txt = gr.Markdown("Click a generated image for its provenance.",
                                     elem_id="sample-provenance")

    page_ids = gr.State([])
    sample_ids = gr.State([])
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

    def show_mode(mode_v: str | None) -> tuple[Any, ...]:
        m = mode_v or "variations"
        return (f"<small>{MODE_HINTS.get(m, '')}</small>", gr.update(visible=m != "variations"),
                gr.update(visible=m == "interpolate"),
                gr.update(visible=m in ("mixup", "class_sample")),
                gr.update(visible=m == "mixup"), gr.update(visible=m == "class_sample"))

    mode.change(show_mode, mode, [mode_hint, mode_row, points, new_per_class, mix_alpha,
                                  covariance], show_progress="hidden")

    @ui.guard(2)
    def on_generate(model_id, source_v, sel, n, k, sampler_v, steps_v, guidance_v, seed_v,
                    name_v, mode_v="variations", points_v=GenerateConfig.points,
                    new_v=GenerateConfig.per_class, alpha_v=GenerateConfig.mix_alpha,
                    cov_v=GenerateConfig.covariance) -> tuple[str, Any]:
        job = generate(ctx, model_id, source_v, sel, n, k, sampler_v, steps_v, guidance_v,
                       seed_v, name_v, mode_v, points_v, new_v, alpha_v, cov_v)
        return (ui.ok_md(f"{job.title} submitted ({job.status}); follow it in the Jobs "
                         f"panel below"), gr.skip())

    gen_btn.click(on_generate, [model, source, selected, per_class, variations, sampler, steps,
                                guidance, seed, name, mode, points, new_per_class, mix_alpha,
                                covariance], [status, generation], api_name="generate")

    @ui.guard(1)
    def on_reencode(generation_id: str | None) -> str:
        job = reencode(ctx, generation_id)
        return ui.ok_md(f"{job.title} submitted ({job.status}); follow it in the Jobs panel "
                        f"below")

    reencode_btn.click(on_reencode, generation, status, api_name="reencode")

    @ui.guard(4, status=1)
    def show_samples(generation_id: str | None, page_v: float | None) -> tuple[Any, ...]:
        return sample_page(ctx, generation_id, int(page_v or 1))

    sample_out = [samples, gen_info, sample_ids, gen_page]
    generation.change(lambda g: show_samples(g, 1), generation, sample_out)
    gen_page.submit(show_samples, [generation, gen_page], sample_out)
    gen_prev.click(lambda g, p: show_samples(g, (p or 1) - 1), [generation, gen_page],
                   sample_out)
    gen_next.click(lambda g, p: show_samples(g, (p or 1) + 1), [generation, gen_page],
                   sample_out)

    @ui.guard(2, status=1)
    def pick_sample(ids: list[str], evt: gr.SelectData) -> tuple[Any, Any]:
        if evt.index is None or evt.index >= len(ids):
            return gr.skip(), gr.skip()
        return sample_details(ctx, ids[evt.index])

    samples.select(pick_sample, sample_ids, [sample_img, sample_txt])

    known = gr.State(None)  # generation ids this page has seen (None: not loaded yet)

    def refresh(model_id, generation_id, page_v, seen):
        gens = generation_choices(ctx)
        ids = [v for _, v in gens]
        new = [g for g in ids if seen is not None and g not in seen]
        if new:  # a generation just finished: show it
            gen_value = new[-1]
        elif generation_id in ids:
            gen_value = generation_id
        else:
            gen_value = ids[-1] if ids else None
        # same generation: redraw its page (its info line may say re-encoded now)
        view = sample_page(ctx, gen_value, int(page_v or 1)) if gen_value == generation_id \
            else (gr.skip(),) * 4
        return (ui.dropdown(model_choices(ctx, True), model_id),
                gr.update(choices=gens, value=gen_value), *view, ids)

    shared.on_refresh(refresh, [model, generation, gen_page, known],
                      [model, generation, *sample_out, known])

    def defaults() -> tuple[Any, ...]:
        from studio.tabs.settings_tab import effective

        eff = effective(ctx)
        return int(eff["gen_steps"]), int(eff["gen_variations"]), eff["gen_sampler"]

    shared.on_project(defaults, [], [steps, variations, sampler])
    # images picked in another project mean nothing here
    shared.on_project(lambda: ([], [], "0 images selected", None), [],
                      [selected, picked, picked_info, known])
