"""Generate tab: pick a model and real images, generate from their representations, re-encode.

The representations are the chosen images' own (seeded variations: the paper's), points on
the path between two chosen images, mix-ups within each class, or new draws from each
class's fitted distribution (``GenerateConfig.mode``); any of them can be perturbed
(``GenerateConfig.perturb``: seeded Gaussian noise relative to the training encodings' spread).

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import gradio as gr

from engine.config import (
    COVARIANCES,
    GENERATED_FORMATS,
    PERTURB_MAX,
    SAMPLERS,
    EncodeConfig,
    GenerateConfig,
)
from engine.errors import InvalidConfigError, NotReadyError
from engine.project import Encoding, Generation, Image, Job, Model, Sample, reads
from engine.settings import device, effective
from studio import ui
from studio.choices import ALL, class_choices, generation_choices, image_page, model_choices
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

PICK_PAGE = 40
SAMPLE_PAGE = 48
SAMPLE_COLUMNS = 12
STRIP_COLUMNS_MAX = 12  # an edit's strip (λ values x seeds) up to this wide: one row each
SOURCES = ["selected images", "N per class", "all training images"]
# (label, GenerateConfig.mode): what the model is conditioned on
MODES = [("variations of each image (the paper's)", "variations"),
         ("interpolation between two selected images", "interpolate"),
         ("mix-ups of two images of a class", "mixup"),
         ("new draws from each class's distribution", "class_sample"),
         ("edit: move along a class direction (λ strip)", "edit")]
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
    "edit": "Each source moved along the direction from class <b>A</b>'s mean "
            "representation towards class <b>B</b>'s: <b>r + λ (mean B − mean A)</b>, one "
            "image per λ of the strip (and seed): λ = 0 is the source's own representation, "
            "λ = 1 moves it by the whole gap between the two class means.",
}
MAX_UPLOADS = 16  # images uploaded as sources of one generation in the studio
AUTO_CLASS = "nearest class (auto)"
DEFAULT_STRIP = "0, 0.25, 0.5, 0.75, 1"
PERTURB_HELP = ("Adds Gaussian noise of λ times the per-dimension standard deviation of the "
                "training encodings to each sample's representation, seeded by the sample's "
                "seed: 0 = off; higher = more diverse images, less like their source. Applies "
                "to every mode.")
FORMAT_HELP = ("PNG keeps every pixel; WebP and JPEG at quality 90-95 take a few times fewer "
               "bytes (WebP at 100: lossless). Recorded in the generation's config.")


def quality_value(value: Any) -> int:
    """The quality box's value as a whole number (the config bounds it to 1..100)."""
    if value is None or value == "":
        return GenerateConfig.quality
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number):
        raise InvalidConfigError(f"quality must be a whole number in [1, 100], got {value!r}")
    return int(number)


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
             covariance: str = "ledoit_wolf", perturb: float = 0.0,
             uploads: list[str] | None = None, upload_class: str | None = None,
             edit_from: str | None = None, edit_to: str | None = None,
             strip: str | None = None, normalise: bool = False, invert: bool = False,
             image_format: str | None = None, quality: Any = None) -> Job:
    """Submit a generation. ``uploads``: image files that are not in the project (from the
    upload box), sources beside the selected images, labelled ``upload_class`` or by the
    nearest class centroid; ``edit_from``/``edit_to``/``strip``: an edit's direction (two
    class names) and its λ values ("0, 0.5, 1"); ``image_format`` / ``quality``: the
    files' format (png, webp, jpeg) and the lossy formats' quality (1..100)."""
    from engine.stages import generate_stage

    if not model_id:
        raise NotReadyError("the project has no trained model yet; train one in the Train tab")
    mode = mode or "variations"
    files = [str(f) for f in (uploads or []) if f]
    if len(files) > MAX_UPLOADS:
        raise InvalidConfigError(f"at most {MAX_UPLOADS} uploaded images per generation, got "
                                 f"{len(files)}")
    if files:  # encoded below, before the job: only an editor may make the studio work
        ctx.access.check_write(ctx.editor, "generate from uploaded images")
        for f in files:
            ctx.access.check_upload(f)
    if mode == "interpolate" and len(selected or []) + len(files) != 2:
        raise InvalidConfigError(f"interpolation needs exactly two source images (click two "
                                 f"in the picker, or upload them); "
                                 f"{len(selected or []) + len(files)} given")
    edit = {}
    if mode == "edit":
        if not edit_from or not edit_to or edit_from == edit_to:
            raise InvalidConfigError("an edit needs two different classes: the direction goes "
                                     "from class A's mean towards class B's")
        strengths = parse_strip(strip)
        edit = {"direction": f"{edit_from}:{edit_to}", "normalise": bool(normalise),
                "strength": strengths[0], "sweep": strengths if len(strengths) > 1 else ()}
    config = GenerateConfig(variations=int(variations), sampler=sampler, steps=int(steps),
                            guidance=float(guidance), seed=int(seed), device=device(ctx.project),
                            mode=mode, points=int(points or 0),
                            per_class=int(new_per_class or 0), mix_alpha=float(mix_alpha or 0),
                            covariance=covariance or "ledoit_wolf",
                            perturb=float(perturb or 0.0),
                            invert=bool(invert) and mode in ("edit", "interpolate"),
                            image_format=image_format or GenerateConfig.image_format,
                            quality=quality_value(quality), **edit)
    if mode == "interpolate":
        ids = list(selected or [])
    elif files and source == "selected images":
        ids = list(selected or [])  # the uploads alone are a pool too
    else:
        ids = source_ids(ctx, model_id, source, selected, per_class)
        if ids is None and files:  # every training image, and the uploads
            m = ctx.project.get(Model, model_id)
            ids = ctx.project.images(m.dataset_id, split="train")["id"].tolist()
    label = None if not upload_class or upload_class == AUTO_CLASS else upload_class
    return ctx.submit(generate_stage.prepare(ctx.project, config, model_id, ids,
                                             (name or "").strip() or None,
                                             image_files=files or None,
                                             label=label if files else None))


def parse_strip(text: str | None) -> tuple[float, ...]:
    """λ values from "0, 0.25, 0.5" (commas or spaces); bounds are GenerateConfig's."""
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    if not parts:
        raise InvalidConfigError("give the edit's λ values, e.g. 0, 0.5, 1")
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        raise InvalidConfigError(f"λ values must be numbers separated by commas, got "
                                 f"{text!r}") from None


def reencode(ctx: StudioContext, generation_id: str | None) -> Job:
    """Re-encode a generation with its model's encoder (PCA for the class baseline)."""
    from engine.stages import encode_stage

    if not generation_id:
        raise NotReadyError("generate images first, then re-encode them")
    gen = ctx.project.get(Generation, generation_id)
    encoder = gen.encoder if gen.encoder and gen.encoder != "class" else "pca"
    return ctx.submit(encode_stage.prepare(ctx.project,
                                           EncodeConfig(encoder=encoder,
                                                        device=device(ctx.project)),
                                           generation_ref=gen.id))


def sample_page(ctx: StudioContext, generation_id: str | None, page: int = 1,
                page_size: int = SAMPLE_PAGE) -> tuple[list[tuple[str, str]], str, list[str], int]:
    """One page of a generation's samples (``engine.project.reads.sample_page``).

    Returns:
        (gallery items [(path, caption)], markdown, their sample ids, page (clamped)).
    """
    if not generation_id:
        return [], "No generation yet.", [], 1
    gen = ctx.project.get(Generation, generation_id)
    p = reads.sample_page(ctx.project, gen.id, page, page_size)
    page, pages, rows = p.page, p.pages, p.rows
    cfg = gen.config
    mode = (cfg.get("conditions") or {}).get("mode", cfg.get("mode", "variations"))
    lam = reads.plan_weights(ctx.project, gen, rows["idx"].tolist()) if mode == "edit" else {}
    items = [(ui.gallery_path(ctx.project.abs(r.path)),
              f"λ {lam[r.idx]:g}" if r.idx in lam else f"{r.class_name}")
             for r in rows.itertuples()]
    reencoded = bool(ctx.project.list(Encoding, target="generation", target_id=gen.id))
    what = "" if mode == "variations" else f"{dict((v, k) for k, v in MODES).get(mode, mode)} · "
    k = cfg.get("variations", "?")
    perturb = float(cfg.get("perturb") or 0.0)
    text = (f"**{gen.name}** · {gen.count:,} images · {what}{k} "
            f"seed{'' if k == 1 else 's'} per representation · "
            + (f"perturbed, λ = {perturb:g} · " if perturb > 0 else "")
            + f"{cfg.get('sampler', '?')} {cfg.get('steps', '?')} steps · guidance "
            f"{cfg.get('guidance', '?')} · "
            + ("re-encoded ✓" if reencoded else "**not re-encoded yet** (needed to curate)")
            + f" · page {page} of {pages}")
    if mode == "edit":
        edit = (cfg.get("conditions") or {}).get("edit") or {}
        text += f" · edit {edit.get('direction', '?').replace(':', ' → ')}"
        if strip_width(gen) <= STRIP_COLUMNS_MAX:
            text += ", one row per source"
    return items, text, rows["id"].tolist(), page


def strip_width(gen: Generation) -> int:
    """Samples per source of an edit (λ values x seeds); 0 for other modes."""
    cfg = gen.config
    edit = (cfg.get("conditions") or {}).get("edit")
    if not edit:
        return 0
    return len(edit.get("strengths") or [1]) * int(cfg.get("variations") or 1)


def sample_view(ctx: StudioContext, generation_id: str | None, page: int) -> tuple[Any, ...]:
    """``sample_page`` for the gallery: an edit's strips one row per source."""
    items, text, ids, page = sample_page(ctx, generation_id, page)
    width = strip_width(ctx.project.get(Generation, generation_id)) if generation_id else 0
    columns = width if 0 < width <= STRIP_COLUMNS_MAX else SAMPLE_COLUMNS
    return gr.update(value=items, columns=columns), text, ids, page


def describe_image(ctx: StudioContext, image_id: str, gen: Generation | None = None) -> str:
    """"ID (class, file)" of a real image, the file name of an uploaded source, or says it
    is gone."""
    if image_id.startswith("sha256:") and gen is not None:
        for r in (gen.config.get("conditions") or {}).get("external") or []:
            if r.get("id") == image_id:
                return (f"uploaded file {r.get('name')} ({r.get('class_name')}, "
                        f"{'label given' if r.get('label_from') == 'given' else 'nearest class'}"
                        f", sha256 {str(r.get('sha256'))[:12]}…)")
    try:
        img = ctx.project.get(Image, image_id)
        return f"{img.id} ({img.class_name}, {img.source_path or img.path})"
    except Exception:  # noqa: BLE001 - a vanished source still shows the rest
        return f"{image_id} (no longer in the project)"


def sample_details(ctx: StudioContext, sample_id: str) -> tuple[str, str]:
    """(path of the generated image, markdown provenance: source image, model, seed...)."""
    s = ctx.project.get(Sample, sample_id)
    gen = ctx.project.get(Generation, s.generation_id)
    model = ctx.project.get(Model, gen.model_id) if getattr(gen, "model_id", "") else None
    lines = [f"**{s.class_name}** · seed {s.seed} · {s.sampler} {s.steps} steps · "
             f"guidance {s.guidance:g}",
             f"generation **{gen.name}**" + (f" · model **{model.name}** ({model.encoder})"
                                              if model else "")]
    plan = reads.sample_plan(ctx.project, gen, s.idx)
    mode = plan.get("mode", "variations")

    partner, weight = plan.get("partner_image_id") or "", float(plan.get("weight") or 0.0)
    if mode == "interpolate":
        lines.append(f"interpolation at t = {weight:.3f} from real image "
                     f"{describe_image(ctx, s.source_image_id)} to {describe_image(ctx, partner)}")
    elif mode == "mixup":
        lines.append(f"mix-up of real images {describe_image(ctx, s.source_image_id)} and "
                     f"{describe_image(ctx, partner)}, weight {weight:.3f} on the second")
    elif mode == "class_sample":
        lines.append(f"new representation drawn from the distribution of class "
                     f"{s.class_name} (representation {plan.get('cond_index', '?')})")
    elif mode == "edit":
        edit = (gen.config.get("conditions") or {}).get("edit") or {}
        a, _, b = str(edit.get("direction", "?:?")).partition(":")
        lines.append(f"edit of {describe_image(ctx, s.source_image_id, gen)}: moved by "
                     f"λ = {weight:g} from class {a} towards class {b}"
                     + (" (unit direction)" if edit.get("normalise") else ""))
    elif s.source_image_id:
        lines.append(f"variation of {'real image ' if not s.source_image_id.startswith('sha256:') else ''}"
                     f"{describe_image(ctx, s.source_image_id, gen)}")
    inversion = (gen.config.get("conditions") or {}).get("inversion")
    if inversion:
        lines.append(f"regenerated from the source's inverted DDPM noise "
                     f"({inversion.get('steps')} steps): it keeps the source's layout")
    strength = float(plan.get("perturb") or 0.0)
    if strength > 0:
        lines.append(f"representation perturbed: λ = {strength:g} (× the training encodings' "
                     f"per-dimension std), noise seed {int(plan.get('noise_seed', s.seed))}, "
                     f"distance {float(plan.get('perturb_distance') or 0.0):.4g} from the "
                     f"unperturbed representation")
    lines.append(f"<small>sample {s.id}<br>file {s.path}</small>")
    return str(ctx.project.abs(s.path)), "  \n".join(lines)


# ---------------------------------------------------------------------- event handlers


def model_dataset(ctx: StudioContext, model_id: str | None) -> str | None:
    return ctx.project.get(Model, model_id).dataset_id if model_id else None


def picker_dataset(ctx: StudioContext, model_id: str | None, dataset_id: str | None
                   ) -> str | None:
    """The dataset the picker shows: the chosen model's, else the studio's current dataset
    (images can be picked before any model is trained)."""
    return model_dataset(ctx, model_id) or dataset_id or None


PICKS_KEY = "generate-picks:"  # + dataset id: the picked images, kept in the project's meta


def load_picks(ctx: StudioContext, dataset_id: str | None) -> list[str]:
    """The images picked in ``dataset_id`` (kept in the project: a reload keeps them)."""
    if not dataset_id:
        return []
    try:
        ids = json.loads(ctx.project.get_meta(PICKS_KEY + dataset_id, "[]"))
    except ValueError:
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []


def save_picks(ctx: StudioContext, dataset_id: str | None, selected: list[str]) -> None:
    if dataset_id and not ctx.project.read_only:
        ctx.project.set_meta(PICKS_KEY + dataset_id, json.dumps(list(selected)))


def show_picker(ctx: StudioContext, model_id: str | None, dataset_id: str | None,
                class_name: str | None, page: float | None) -> tuple[Any, ...]:
    """(picker items, their image ids, page) of the training images."""
    items, ids, p, _ = image_page(ctx, picker_dataset(ctx, model_id, dataset_id), class_name,
                                  "train", int(page or 1), PICK_PAGE)
    return items, ids, p


def picker_first(ctx: StudioContext, model_id: str | None, dataset_id: str | None,
                 class_name: str | None) -> tuple[Any, ...]:
    return show_picker(ctx, model_id, dataset_id, class_name, 1)


def picker_prev(ctx: StudioContext, model_id: str | None, dataset_id: str | None,
                class_name: str | None, page: float | None) -> tuple[Any, ...]:
    return show_picker(ctx, model_id, dataset_id, class_name, (page or 1) - 1)


def picker_next(ctx: StudioContext, model_id: str | None, dataset_id: str | None,
                class_name: str | None, page: float | None) -> tuple[Any, ...]:
    return show_picker(ctx, model_id, dataset_id, class_name, (page or 1) + 1)


PICKER_CAPTION = "Training images: click to select / unselect"


def source_hint(ctx: StudioContext, model_id: str | None, dataset_id: str | None) -> str:
    """The picker's caption: what it shows, and what generating needs."""
    ds = picker_dataset(ctx, model_id, dataset_id)
    if ds is None:
        return f"{PICKER_CAPTION} · import a dataset (Data tab) first"
    if model_id:
        return PICKER_CAPTION
    if any(m.status == "trained" and m.dataset_id == ds for m in ctx.project.list(Model)):
        return f"{PICKER_CAPTION} · choose a trained model above to generate from them"
    return (f"{PICKER_CAPTION} · no trained model for this dataset yet: pick images now; "
            f"generating needs a model trained in the Train tab")


def show_source(ctx: StudioContext, model_id: str | None, dataset_id: str | None
                ) -> tuple[Any, ...]:
    """The class dropdown, the first picker page and the picks kept for the dataset."""
    ds = picker_dataset(ctx, model_id, dataset_id)
    selected = load_picks(ctx, ds)
    return (gr.update(choices=class_choices(ctx, ds), value=ALL),
            *show_picker(ctx, model_id, dataset_id, ALL, 1), selected,
            *picked_view(ctx, selected), source_hint(ctx, model_id, dataset_id))


def picked_view(ctx: StudioContext, selected: list[str]) -> tuple[Any, str]:
    """(gallery of the selected images, "N image(s) selected")."""
    items = []
    for image_id in selected[:48]:
        try:
            img = ctx.project.get(Image, image_id)
        except Exception:  # noqa: BLE001 - a pick of a removed dataset shows nothing
            continue
        items.append((str(ctx.project.abs(img.thumb or img.path)), img.class_name))
    return items, f"**{len(selected)}** image(s) selected"


def toggle(ctx: StudioContext, model_id: str | None, dataset_id: str | None, ids: list[str],
           selected: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
    """Select / unselect the clicked training image (the source becomes "selected images");
    the picks are kept in the project."""
    if evt.index is None or evt.index >= len(ids):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    image_id = ids[evt.index]
    selected = [s for s in selected if s != image_id] if image_id in selected \
        else [*selected, image_id]
    save_picks(ctx, picker_dataset(ctx, model_id, dataset_id), selected)
    return (selected, *picked_view(ctx, selected), "selected images")


def clear_selection(ctx: StudioContext, model_id: str | None, dataset_id: str | None
                    ) -> tuple[Any, ...]:
    save_picks(ctx, picker_dataset(ctx, model_id, dataset_id), [])
    return [], [], "0 images selected"


def show_mode(mode: str | None) -> tuple[Any, ...]:
    """The hint and the visible fields of a representation mode."""
    m = mode or "variations"
    return (f"<small>{MODE_HINTS.get(m, '')}</small>",
            gr.update(visible=m not in ("variations", "edit")),
            gr.update(visible=m == "interpolate"),
            gr.update(visible=m in ("mixup", "class_sample")),
            gr.update(visible=m == "mixup"), gr.update(visible=m == "class_sample"),
            gr.update(visible=m == "edit"), gr.update(visible=m in ("edit", "interpolate")))


def class_lists(ctx: StudioContext, model_id: str | None, dataset_id: str | None
                ) -> tuple[Any, ...]:
    """The edit's two class dropdowns and the uploads' class, from the model's dataset."""
    from engine.project import Dataset

    ds = picker_dataset(ctx, model_id, dataset_id)
    names = [str(c) for c in ctx.project.get(Dataset, ds).classes] if ds else []
    return (gr.update(choices=names, value=names[0] if names else None),
            gr.update(choices=names, value=names[-1] if names else None),
            gr.update(choices=[AUTO_CLASS, *names], value=AUTO_CLASS))


def show_uploads(files: list[str] | None) -> str:
    n = len([f for f in files or [] if f])
    if not n:
        return ""
    more = f" (at most {MAX_UPLOADS})" if n > MAX_UPLOADS else ""
    return f"<small>{n} uploaded image(s){more} join the source images</small>"


@ui.guard(2)
def on_generate(ctx: StudioContext, model_id, source_v, sel, n, k, sampler_v, steps_v,
                guidance_v, seed_v, name_v, mode_v="variations",
                points_v=GenerateConfig.points, new_v=GenerateConfig.per_class,
                alpha_v=GenerateConfig.mix_alpha, cov_v=GenerateConfig.covariance,
                perturb_v=GenerateConfig.perturb, uploads_v=None, upload_class_v=None,
                from_v=None, to_v=None, strip_v=DEFAULT_STRIP, normalise_v=False,
                invert_v=False, format_v=GenerateConfig.image_format,
                quality_v=GenerateConfig.quality) -> tuple[str, Any]:
    job = generate(ctx, model_id, source_v, sel, n, k, sampler_v, steps_v, guidance_v,
                   seed_v, name_v, mode_v, points_v, new_v, alpha_v, cov_v, perturb_v,
                   uploads_v, upload_class_v, from_v, to_v, strip_v, normalise_v, invert_v,
                   format_v, quality_v)
    return (ui.ok_md(f"{job.title} submitted ({job.status}); follow it in the Jobs "
                     f"panel below"), gr.skip())


@ui.guard(1)
def on_reencode(ctx: StudioContext, generation_id: str | None) -> str:
    job = reencode(ctx, generation_id)
    return ui.ok_md(f"{job.title} submitted ({job.status}); follow it in the Jobs panel "
                    f"below")


@ui.guard(4, status=1)
def show_samples(ctx: StudioContext, generation_id: str | None,
                 page: float | None) -> tuple[Any, ...]:
    return sample_view(ctx, generation_id, int(page or 1))


def samples_first(ctx: StudioContext, generation_id: str | None) -> tuple[Any, ...]:
    return show_samples(ctx, generation_id, 1)


def samples_prev(ctx: StudioContext, generation_id: str | None,
                 page: float | None) -> tuple[Any, ...]:
    return show_samples(ctx, generation_id, (page or 1) - 1)


def samples_next(ctx: StudioContext, generation_id: str | None,
                 page: float | None) -> tuple[Any, ...]:
    return show_samples(ctx, generation_id, (page or 1) + 1)


@ui.guard(2, status=1)
def pick_sample(ctx: StudioContext, ids: list[str], evt: gr.SelectData) -> tuple[Any, Any]:
    if evt.index is None or evt.index >= len(ids):
        return gr.skip(), gr.skip()
    return sample_details(ctx, ids[evt.index])


def refresh(ctx: StudioContext, model_id: str | None, generation_id: str | None,
            page: float | None, seen: list[str] | None) -> tuple[Any, ...]:
    """The model and generation lists; a generation that just finished is shown."""
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
    view = sample_view(ctx, gen_value, int(page or 1)) if gen_value == generation_id \
        else (gr.skip(),) * 4
    return (ui.dropdown(model_choices(ctx, True), model_id),
            gr.update(choices=gens, value=gen_value), *view, ids)


def defaults(ctx: StudioContext) -> tuple[Any, ...]:
    """The form's defaults from the project's settings: steps, variations, sampler."""
    eff = effective(ctx.project)
    return int(eff["gen_steps"]), int(eff["gen_variations"]), eff["gen_sampler"]


def forget_selection() -> tuple[Any, ...]:
    """Images picked in another project mean nothing here."""
    return [], [], "0 images selected", None


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    dataset = shared.dataset
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("#### 1 · Source images", elem_classes=["section-title"])
            model = gr.Dropdown(label="Model (trained)", choices=[], value=None,
                                allow_custom_value=True,
                                elem_id="gen-model")
            source = gr.Radio(SOURCES, value=SOURCES[0], label="Vary",
                              elem_id="gen-source")
            with gr.Row(elem_classes=["bottom-align"]):
                cls = gr.Dropdown(label="Class", choices=[ALL], value=ALL,
                                  allow_custom_value=True,
                                  scale=2)
                per_class = gr.Number(label="N per class", value=2, precision=0, minimum=1,
                                      scale=1)
                prev_btn = gr.Button("◀", size="sm", scale=0, min_width=40)
                page = gr.Number(value=1, label="Page", precision=0, minimum=1, scale=1,
                                 min_width=60)
                next_btn = gr.Button("▶", size="sm", scale=0, min_width=40)
            source_note = gr.Markdown(PICKER_CAPTION, elem_classes=["image-caption"],
                                      elem_id="gen-source-note")
            picker = gr.Gallery(show_label=False, columns=10, height=320,
                                allow_preview=False, object_fit="contain",
                                elem_id="gen-picker", elem_classes=["captioned"])
            with gr.Row(elem_classes=["bottom-align"]):
                picked_info = gr.Markdown("0 images selected", elem_id="gen-picked-info")
                clear_btn = gr.Button("Clear selection", size="sm", scale=0, min_width=120)
            picked = gr.Gallery(show_label=False, columns=12, height=112, allow_preview=False,
                                object_fit="contain", fit_columns=False, elem_id="gen-picked")
            with gr.Accordion("…or upload images that are not in the project", open=False,
                              elem_id="gen-upload-panel"):
                with gr.Row(elem_classes=["bottom-align"]):
                    uploads = gr.File(label=f"Images (up to {MAX_UPLOADS}): encoded with the "
                                            f"model's encoder, used as sources",
                                      file_count="multiple", file_types=["image"],
                                      type="filepath", elem_id="gen-uploads", scale=3)
                    upload_class = gr.Dropdown([AUTO_CLASS], value=AUTO_CLASS,
                                               label="Their class", elem_id="gen-upload-class", min_width=190,
                                               scale=1)
                uploads_info = gr.HTML(elem_id="gen-uploads-info")
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
            with gr.Group(visible=False) as edit_group:
                with gr.Row():
                    edit_from = gr.Dropdown([], label="From class A", elem_id="gen-edit-from",
                                            allow_custom_value=True)
                    edit_to = gr.Dropdown([], label="towards class B", elem_id="gen-edit-to",
                                          allow_custom_value=True)
                with gr.Row(elem_classes=["bottom-align"]):
                    strip = gr.Textbox(DEFAULT_STRIP, label="λ strip (one image per value)",
                                       elem_id="gen-edit-strip", scale=3)
                    normalise = gr.Checkbox(False, label="unit direction", scale=1,
                                            elem_id="gen-edit-normalise")
            invert = gr.Checkbox(False, visible=False, elem_id="gen-invert",
                                 label="keep each source's layout (DDPM inversion: the source "
                                       "inverted under its own representation, regenerated "
                                       "under the new one; Steps = posterior steps)")
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
            perturb = gr.Slider(0.0, PERTURB_MAX, value=GenerateConfig.perturb, step=0.05,
                                label="Perturbation λ", info=PERTURB_HELP,
                                elem_id="gen-perturb")
            with gr.Accordion("File format", open=False, elem_id="gen-format-panel"):
                with gr.Row(elem_classes=["bottom-align"]):
                    image_format = gr.Dropdown(list(GENERATED_FORMATS),
                                               value=GenerateConfig.image_format,
                                               label="Format", elem_id="gen-format")
                    quality = gr.Number(label="Quality (webp / jpeg)",
                                        value=GenerateConfig.quality, precision=0, minimum=1,
                                        maximum=100, elem_id="gen-quality")
                gr.Markdown(f"<small>{FORMAT_HELP}</small>")
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
    known = gr.State(None)  # generation ids this page has seen (None: not loaded yet)
    pick_out = [picker, page_ids, page]
    sample_out = [samples, gen_info, sample_ids, gen_page]
    form = [model, source, selected, per_class, variations, sampler, steps, guidance, seed,
            name, mode, points, new_per_class, mix_alpha, covariance, perturb, uploads,
            upload_class, edit_from, edit_to, strip, normalise, invert, image_format, quality]

    source_out = [cls, *pick_out, selected, picked, picked_info, source_note]
    gr.on([model.change, dataset.change], ui.bind(show_source, ctx), [model, dataset],
          source_out)
    cls.change(ui.bind(picker_first, ctx), [model, dataset, cls], pick_out)
    page.submit(ui.bind(show_picker, ctx), [model, dataset, cls, page], pick_out)
    prev_btn.click(ui.bind(picker_prev, ctx), [model, dataset, cls, page], pick_out)
    next_btn.click(ui.bind(picker_next, ctx), [model, dataset, cls, page], pick_out)
    picker.select(ui.bind(toggle, ctx), [model, dataset, page_ids, selected],
                  [selected, picked, picked_info, source])
    clear_btn.click(ui.bind(clear_selection, ctx), [model, dataset],
                    [selected, picked, picked_info])
    gr.on([model.change, dataset.change], ui.bind(class_lists, ctx), [model, dataset],
          [edit_from, edit_to, upload_class])
    mode.change(show_mode, mode, [mode_hint, mode_row, points, new_per_class, mix_alpha,
                                  covariance, edit_group, invert], show_progress="hidden")
    uploads.change(show_uploads, uploads, uploads_info, show_progress="hidden")
    gen_btn.click(ui.bind(on_generate, ctx), form, [status, generation], api_name="generate")
    reencode_btn.click(ui.bind(on_reencode, ctx), generation, status, api_name="reencode")
    generation.change(ui.bind(samples_first, ctx), generation, sample_out)
    gen_page.submit(ui.bind(show_samples, ctx), [generation, gen_page], sample_out)
    gen_prev.click(ui.bind(samples_prev, ctx), [generation, gen_page], sample_out)
    gen_next.click(ui.bind(samples_next, ctx), [generation, gen_page], sample_out)
    samples.select(ui.bind(pick_sample, ctx), sample_ids, [sample_img, sample_txt])
    shared.on_refresh(ui.bind(refresh, ctx), [model, generation, gen_page, known],
                      [model, generation, *sample_out, known])
    shared.on_project(ui.bind(defaults, ctx), [], [steps, variations, sampler])
    shared.on_project(forget_selection, [], [selected, picked, picked_info, known])
