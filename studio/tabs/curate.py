"""Curate tab: distances to class centroids, a band per class, the band's edges, selections."""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from engine.config import BandConfig
from engine.errors import NotReadyError
from engine.project import Encoding, Generation, Selection
from studio import ui
from studio.context import StudioContext
from studio.shared import Shared
from studio.tabs.generate import generation_choices

log = logging.getLogger(__name__)

EDGE_K = 8
EDGES = [("nearest_dropped", "Dropped · nearest (near-prototypes)"),
         ("nearest_kept", "Kept · nearest edge"),
         ("farthest_kept", "Kept · farthest edge"),
         ("farthest_dropped", "Dropped · farthest (outliers)")]
PRESETS = [("Paper middle (2x → 1x)", "middle"), ("Keep all", "all"),
           ("Nearest half", "nearest"), ("Farthest half", "farthest")]


def band_view(ctx: StudioContext, generation_id: str | None, low: float, high: float,
              centroid: str, metric: str) -> dict[str, Any]:
    """Everything the tab shows for one band.

    Returns:
        {"figure", "counts" (DataFrame), "edges" ({key: [(path, caption)]}), "text",
         "kept", "total"}.
    """
    from engine import curate
    from engine.stages import curate as curate_stage

    if not generation_id:
        raise NotReadyError("generate images and re-encode them first (Generate tab)")
    band = BandConfig(low=float(low), high=float(high), centroid=centroid, metric=metric)
    bd = ctx.band_data(generation_id, centroid, metric)
    mask = curate_stage.band_mask(bd, band)
    table = curate_stage.summary(bd, mask)
    counts = table[["class", "total", "kept", "dropped_near", "dropped_far"]].rename(
        columns={"dropped_near": "drop near", "dropped_far": "drop far"})
    counts["kept distances"] = [
        "" if pd.isna(a) else f"{a:.3f} – {b:.3f}"
        for a, b in zip(table["low_distance"], table["high_distance"])]
    fig = curate.band_figure(bd.distances, bd.labels, bd.class_names, mask, bd.real_distances,
                             bd.real_labels, metric=metric)
    fig.update_layout(height=430, margin=dict(l=60, r=20, t=60, b=50))
    samples = ctx.project.samples(bd.generation.id)
    edges = {}
    for key, idx in curate.edge_samples(bd.distances, bd.labels, mask, EDGE_K).items():
        edges[key] = [(str(ctx.project.abs(samples["path"].iat[i])),
                       f"{bd.distances[i]:.2f}")
                      for i in idx.tolist()]
    kept, total = int(mask.sum()), int(len(mask))
    text = (f"Keeping **{kept:,}** of {total:,} generated images "
            f"({100.0 * kept / max(total, 1):.0f} %) · band {band.low:.2f} – {band.high:.2f} "
            f"of each class's distance ranks · centroid: {centroid} · {metric}")
    return {"figure": fig, "counts": counts, "edges": edges, "text": text, "kept": kept,
            "total": total}


def save(ctx: StudioContext, generation_id: str | None, low: float, high: float,
         centroid: str, metric: str, name: str | None) -> Selection:
    from engine.stages import curate as curate_stage

    if not generation_id:
        raise NotReadyError("generate images and re-encode them first (Generate tab)")
    band = BandConfig(low=float(low), high=float(high), centroid=centroid, metric=metric)
    bd = ctx.band_data(generation_id, centroid, metric)
    return curate_stage.save_selection(ctx.project, bd, band, name=(name or "").strip() or None)


def selections_table(ctx: StudioContext) -> pd.DataFrame:
    rows = []
    gens = {g.id: g.name for g in ctx.project.list(Generation)}
    for s in ctx.project.list(Selection):
        how = ui.loads(s.config_json)
        band = how.get("band") or {}
        desc = f"band {band.get('low', 0):.2f}–{band.get('high', 1):.2f}" if band else \
            how.get("kind", "")
        rows.append([s.name, gens.get(s.generation_id, s.generation_id), s.count, desc, s.id])
    return pd.DataFrame(rows, columns=["selection", "generation", "images", "how", "id"])


def curatable_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """Generations, the re-encoded ones last so that the default (the last) has a band."""
    choices = generation_choices(ctx)
    return sorted(choices, key=lambda c: c[0].endswith("re-encoded"))


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=360):
            generation = gr.Dropdown(label="Generation (re-encoded)", choices=[], value=None,
                                     allow_custom_value=True, elem_id="curate-gen")
            centroid = gr.Radio(["real", "generated", "both"], value="real",
                                label="Class centroid of")
            metric = gr.Radio(["cosine", "euclidean"], value="cosine", label="Distance")
            low = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="Band low (quantile)",
                            elem_id="band-low")
            high = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Band high (quantile)",
                             elem_id="band-high")
            with gr.Row():
                presets = [gr.Button(label, size="sm", min_width=150,
                                     variant="primary" if key == "middle" else "secondary",
                                     elem_id=f"preset-{key}") for label, key in PRESETS]
            summary_md = gr.Markdown(elem_id="band-summary")
        with gr.Column(scale=5):
            plot = gr.Plot(show_label=False, elem_id="band-plot")
    with gr.Row():
        galleries = {key: gr.Gallery(label=label, columns=4, height=170, object_fit="contain",
                                     allow_preview=True, fit_columns=False,
                                     elem_classes=["edge-gallery"])
                     for key, label in EDGES}
    with gr.Row():
        with gr.Column(scale=3):
            counts = gr.Dataframe(label="Per class", interactive=False, max_height=300,
                                  elem_id="band-counts")
        with gr.Column(scale=2, min_width=320):
            with gr.Row(elem_classes=["bottom-align"]):
                name = gr.Textbox(label="Selection name",
                                  placeholder="default: <generation>-band-…", scale=2,
                                  elem_id="selection-name")
                save_btn = gr.Button("Save selection", variant="primary", scale=1,
                                     min_width=160, elem_id="save-selection")
            status = gr.HTML(elem_id="curate-status")
            selections = gr.Dataframe(label="Selections", interactive=False, max_height=220,
                                      value=selections_table(ctx), elem_id="selections-table")

    inputs = [generation, low, high, centroid, metric]
    outputs = [plot, counts, summary_md, *galleries.values()]

    @ui.guard(len(outputs), status=2)
    def update(generation_id, low_v, high_v, centroid_v, metric_v) -> tuple[Any, ...]:
        if not generation_id:
            return (gr.skip(), gr.skip(),
                    ui.info_md("Generate images and re-encode them (Generate tab) to curate "
                               "them here."), *[gr.skip()] * len(galleries))
        if not ctx.project.list(Encoding, target="generation", target_id=generation_id):
            return (gr.skip(), gr.skip(),
                    ui.info_md("This generation is not re-encoded yet: click 'Re-encode for "
                               "curation' in the Generate tab; the band appears when it is "
                               "done."), *[gr.skip()] * len(galleries))
        if low_v >= high_v:
            return (gr.skip(), gr.skip(),
                    ui.error_md(f"band low ({low_v:.2f}) must be below high ({high_v:.2f})"),
                    *[gr.skip()] * len(galleries))
        v = band_view(ctx, generation_id, low_v, high_v, centroid_v, metric_v)
        return (v["figure"], v["counts"], v["text"], *[v["edges"][k] for k, _ in EDGES])

    # One listener for every input: a preset sets both sliders, the band is drawn once.
    gr.on([generation.change, centroid.change, metric.change, low.change, high.change],
          update, inputs, outputs, show_progress="minimal", trigger_mode="always_last",
          api_name="band")
    for (_, key), btn in zip(PRESETS, presets):
        band = BandConfig.preset(key, 0.5)
        btn.click(lambda b=band: (b.low, b.high), None, [low, high])

    @ui.guard(3)
    def on_save(generation_id, low_v, high_v, centroid_v, metric_v, name_v):
        sel = save(ctx, generation_id, low_v, high_v, centroid_v, metric_v, name_v)
        return (ui.ok_md(f"saved selection {sel.name}: {sel.count:,} images"),
                selections_table(ctx), "")

    save_btn.click(on_save, [*inputs, name], [status, selections, name],
                   api_name="save_selection")

    def refresh(generation_id, low_v, high_v, centroid_v, metric_v):
        choices = curatable_choices(ctx)
        values = [v for _, v in choices]
        if generation_id and generation_id in values:
            # same generation: redraw (it may just have been re-encoded)
            band = update(generation_id, low_v, high_v, centroid_v, metric_v)
        else:  # a new value: its change event draws the band
            band = (gr.skip(),) * len(outputs)
        return (ui.dropdown(choices, generation_id), selections_table(ctx), *band)

    shared.on_refresh(refresh, inputs, [generation, selections, *outputs])
