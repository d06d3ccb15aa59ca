"""Curate tab: distances to class centroids, a band per class, the band's edges, a 2-D map
(WebGL, up to 200,000 points, lasso / box -> Keep / Drop: ``studio.webgl_map``),
metrics of the kept samples, selections (save, combine).

Handlers first (module-level, the context as first argument), then ``build``: the layout and
one line of wiring per event. The band handlers take the band's widgets in the order of
``BAND_INPUTS``: generation, low, high, centroid, metric, mode, per-class bands, outlier
removal, its q and z, target per class, target pick, encoding."""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from gradio.components.plot import PlotData

from engine.config import BandConfig
from engine.errors import InvalidConfigError, NotReadyError
from engine.project import Encoding, Generation, Selection
from studio import ui, webgl_map
from studio.choices import generation_choices, selection_choices
from studio.context import StudioContext
from studio.shared import Shared

log = logging.getLogger(__name__)

EDGE_K = 8
TABLE_HEIGHT = 760  # px: the per-class tables show about 20 classes before they scroll
EDGES = [("nearest_dropped", "Dropped · nearest (near-prototypes)"),
         ("nearest_kept", "Kept · nearest edge"),
         ("farthest_kept", "Kept · farthest edge"),
         ("farthest_dropped", "Dropped · farthest (outliers)")]
PRESETS = [("Paper middle (2x → 1x)", "middle"), ("Keep all", "all"),
           ("Nearest half", "nearest"), ("Farthest half", "farthest")]


def parse_class_bands(text: str | None) -> tuple[tuple[str, float, float], ...]:
    """``CLASS=LOW:HIGH`` entries, one per line (or separated by ";") -> per-class overrides."""
    out = []
    for item in (text or "").replace(";", "\n").splitlines():
        item = item.strip()
        if not item:
            continue
        name, _, rng = item.rpartition("=")
        lo, _, hi = rng.partition(":")
        try:
            out.append((name.strip(), float(lo), float(hi)))
        except ValueError:
            raise InvalidConfigError(
                f"a per-class band must read CLASS=LOW:HIGH, got {item!r}") from None
    return tuple(out)


def make_band(low: float, high: float, centroid: str, metric: str, mode: str = "quantile",
              per_class: str | None = "", outlier: str = "none", outlier_q: float = 0.99,
              outlier_z: float = 3.5, target: float | None = 0,
              target_pick: str = "centre") -> BandConfig:
    """The widgets' values as a ``BandConfig`` (raises ``InvalidConfigError`` when invalid)."""
    return BandConfig(low=float(low), high=float(high), centroid=centroid, metric=metric,
                      mode=mode or "quantile", per_class=parse_class_bands(per_class),
                      outlier=outlier or "none", outlier_q=float(outlier_q or 0.99),
                      outlier_z=float(outlier_z or 3.5),
                      target_per_class=int(target or 0), target_pick=target_pick or "centre")


def _encodings(ctx: StudioContext, generation_id: str) -> list[str]:
    """Ids of the generation's re-encodings, oldest first."""
    return [e.id for e in ctx.project.list(Encoding, target="generation",
                                           target_id=generation_id)]


def _view(ctx: StudioContext, generation_id: str | None, centroid: str, metric: str,
          encoding_id: str | None, encodings: list[str] | None = None):
    """The cached ``BandData`` of the view; ``encodings``: ``_encodings`` of the generation
    when the caller listed them already (a band change lists them once, not three times)."""
    if not generation_id:
        raise NotReadyError("generate images and re-encode them first (Generate tab)")
    encs = _encodings(ctx, generation_id) if encodings is None else encodings
    # an encoding left over from another generation falls back to this one's latest
    if encoding_id not in encs:
        encoding_id = encs[-1] if encs else None
    return ctx.band_data(generation_id, centroid, metric, encoding_id)


def band_view(ctx: StudioContext, generation_id: str | None, low: float, high: float,
              centroid: str, metric: str, encoding_id: str | None = None, *,
              encodings: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """Everything the tab shows for one band (``options``: the other ``make_band`` fields;
    ``encodings``: the generation's re-encodings when already listed, see ``_view``).

    Returns:
        {"figure" (gr.Plot's value: ``figures.band_figure``'s JSON), "counts" (DataFrame),
         "edges" ({key: [(path, caption)]}), "edge_idx" ({key: sample indices}), "text",
         "kept", "total", "mask", "bd"}.
    """
    from engine import curation
    from engine.curation import edge_samples
    from engine.stages import curate_stage
    from studio import figures

    band = make_band(low, high, centroid, metric, **options)
    bd = _view(ctx, generation_id, centroid, metric, encoding_id, encodings)
    project = ctx.project  # this request's, looked up once (not once per gallery image)
    mask = curate_stage.band_mask(bd, band)
    table = curate_stage.summary(bd, mask)
    counts = table[["class", "total", "kept", "dropped_near", "dropped_far"]].rename(
        columns={"dropped_near": "drop near", "dropped_far": "drop far"})
    if band.outlier != "none" or band.target_per_class:
        counts["drop other"] = table["dropped_inside"]
    counts["kept distances"] = [
        "" if pd.isna(a) else f"{a:.3f} – {b:.3f}"
        for a, b in zip(table["low_distance"], table["high_distance"])]
    hand_text = ""
    state = curate_stage.view_hand_state(project, bd)
    if state.any():  # decisions in force (without any, the hand changes no count)
        hand = curation.hand_counts(bd.labels, mask, state, bd.class_names)
        by_hand = hand[hand["class"] != "all"].reset_index(drop=True)
        if by_hand["+ kept by hand"].any() or by_hand["- dropped by hand"].any():
            counts["+ hand"] = by_hand["+ kept by hand"].to_numpy()
            counts["- hand"] = by_hand["- dropped by hand"].to_numpy()
            counts["kept with hand"] = by_hand["kept"].to_numpy()
        total_hand = hand[hand["class"] == "all"].iloc[0]
        if total_hand["+ kept by hand"] or total_hand["- dropped by hand"]:
            hand_text = (f" · by hand: +{int(total_hand['+ kept by hand']):,} / "
                         f"−{int(total_hand['- dropped by hand']):,} → "
                         f"**{int(total_hand['kept']):,}** kept in a saved selection")
    spec = figures.band_figure_spec(bd.distances, bd.labels, bd.class_names, mask,
                                    bd.real_distances, bd.real_labels, metric=metric,
                                    stats=bd.box_stats(),
                                    edges=table[["low_distance", "high_distance"]].to_numpy())
    spec["layout"].update(height=430, margin=dict(l=60, r=20, t=60, b=50))
    # sent as the JSON gr.Plot would write for the Figure, without building one
    fig = PlotData(type="plotly", plot=figures.plotly_json(spec))
    edge_idx = edge_samples(bd.distances, bd.labels, mask, EDGE_K, ranks=bd.class_ranks())
    # only the shown samples' paths: one narrow read, not the generation's every row
    shown = np.concatenate([np.asarray(i, np.int64) for i in edge_idx.values()])
    paths = project.sample_rows(bd.generation.id, shown, ("path",))["path"].tolist()
    edges, at = {}, 0
    for key, idx in edge_idx.items():
        edges[key] = [(ui.gallery_path(project.abs(p)), f"{bd.distances[i]:.2f}")
                      for p, i in zip(paths[at:at + len(idx)], idx.tolist())]
        at += len(idx)
    kept, total = int(mask.sum()), int(len(mask))
    unit = "of each class's distance ranks" if band.mode == "quantile" else "distance"
    extra = "".join([
        f" · {len(band.per_class)} per-class override(s)" if band.per_class else "",
        f" · outliers: {band.outlier}" if band.outlier != "none" else "",
        f" · target {band.target_per_class}/class ({band.target_pick})"
        if band.target_per_class else ""])
    text = (f"Keeping **{kept:,}** of {total:,} generated images "
            f"({100.0 * kept / max(total, 1):.0f} %) · band {band.low:.2f} – {band.high:.2f} "
            f"{unit} · centroid: {centroid} · {metric} · judged by {bd.encoding.encoder}"
            f"{extra}{hand_text}")
    return {"figure": fig, "counts": counts, "edges": edges, "edge_idx": edge_idx, "text": text,
            "kept": kept, "total": total, "mask": mask, "bd": bd}


def save(ctx: StudioContext, generation_id: str | None, low: float, high: float,
         centroid: str, metric: str, name: str | None, encoding_id: str | None = None,
         **options: Any) -> Selection:
    from engine.stages import curate_stage

    band = make_band(low, high, centroid, metric, **options)
    bd = _view(ctx, generation_id, centroid, metric, encoding_id)
    return curate_stage.save_selection(ctx.project, bd, band, name=(name or "").strip() or None,
                                       mask=curate_stage.band_mask(bd, band))


def selections_table(ctx: StudioContext) -> pd.DataFrame:
    from engine.stages.export_stage import band_text

    rows = []
    gens = {g.id: g.name for g in ctx.project.list(Generation)}
    for s in ctx.project.list(Selection):
        rows.append([s.name, gens.get(s.generation_id, s.generation_id), s.count,
                     band_text(s.config), s.id])
    return pd.DataFrame(rows, columns=["selection", "generation", "images", "how", "id"])


def curatable_choices(ctx: StudioContext) -> list[tuple[str, str]]:
    """Generations, the re-encoded ones last so that the default (the last) has a band."""
    choices = generation_choices(ctx)
    return sorted(choices, key=lambda c: c[0].endswith("re-encoded"))


def encoding_choices(ctx: StudioContext, generation_id: str | None) -> list[tuple[str, str]]:
    from engine.stages import curate_stage

    if not generation_id:
        return []
    return curate_stage.encoding_choices(ctx.project, generation_id)


def provenance_md(info: dict[str, Any]) -> str:
    """The details of one sample as markdown (seed, model, sampler, guidance, distances)."""
    return "\n".join([
        f"**{info['class']}** · sample `{info['sample']}`",
        "",
        f"- source image: `{info['source_image_id']}`",
        f"- model: {info['model']} · seed {info['seed']}",
        f"- sampler: {info['sampler']}, {info['steps']} steps, guidance {info['guidance']:g}",
        f"- distance to the {info['centroid']} centroid ({info['metric']}, "
        f"{info['encoder']}): {info['distance']:.4f}",
        f"- within-class quantile: {info['class_quantile']:.3f}",
    ])


def metrics_view(ctx: StudioContext, v: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                   Any, str]:
    """(overall table, per-class table, dashboard figure, copies/duplicates text)."""
    from engine.stages import curate_stage
    from studio import figures

    bd, mask = v["bd"], v["mask"]
    k = 5 if mask.sum() > 20 else 3
    m = curate_stage.metrics(ctx.project, bd, mask, k=k)
    o = m["overall"]
    names = [("precision", "share of kept samples on the real manifold"),
             ("recall", "share of real images on the kept samples' manifold"),
             ("density", "real neighbourhoods per kept sample / k (1 = like real)"),
             ("coverage", "share of real neighbourhoods with a kept sample"),
             ("frechet", "Fréchet distance, real vs kept (representation space)"),
             ("fidelity", "mean cosine source image ↔ sample"),
             ("copies", "kept samples flagged as near-copies of a training image"),
             ("duplicate_pairs", "near-duplicate pairs among kept samples")]
    overall = pd.DataFrame([[n, f"{o[n]:.4g}" if isinstance(o[n], float) else str(o[n]), what]
                            for n, what in names if n in o],
                           columns=["metric", "value", "meaning"])
    per_class = m["per_class"].round(4)
    fig = figures.dashboard_figure(m["per_class"])
    samples = ctx.project.samples(bd.generation.id)
    copies = m["copies"].head(5)
    lines = [f"{o['kept']:,} kept samples vs the real training images (k = {o['k']}, "
             f"{o['n_real']:,} real / {o['n_fake']:,} kept used for the k-NN metrics); "
             f"near-copy threshold {o['copy_threshold']:.4f} "
             f"(0.5 x median real-real neighbour distance)."]
    for r in copies.itertuples():
        lines.append(f"- copy? `{samples['id'].iat[int(r.sample)]}` "
                     f"at {r.distance:.4f} of its nearest training image")
    return overall, per_class, fig, "\n".join(lines)


# ---------------------------------------------------------------------- event handlers


def band_options(mode_v="quantile", per_v="", out_v="none", q_v=0.99, z_v=3.5, t_v=0,
                 pick_v="centre") -> dict[str, Any]:
    """The option widgets' values as ``make_band`` keyword arguments."""
    return dict(mode=mode_v, per_class=per_v, outlier=out_v, outlier_q=q_v,
                outlier_z=z_v, target=t_v, target_pick=pick_v)


def current_band(ctx: StudioContext, generation_id, low_v, high_v, centroid_v, metric_v,
                 mode_v="quantile", per_v="", out_v="none", q_v=0.99, z_v=3.5, t_v=0,
                 pick_v="centre", enc_v=None, *, encodings: list[str] | None = None
                 ) -> dict[str, Any]:
    """``band_view`` of the band widgets' values."""
    return band_view(ctx, generation_id, low_v, high_v, centroid_v, metric_v, enc_v,
                     encodings=encodings,
                     **band_options(mode_v, per_v, out_v, q_v, z_v, t_v, pick_v))


@ui.guard(3 + len(EDGES), status=2)
def show_band(ctx: StudioContext, generation_id, low_v, high_v, centroid_v, metric_v,
              mode_v="quantile", per_v="", out_v="none", q_v=0.99, z_v=3.5, t_v=0,
              pick_v="centre", enc_v=None) -> tuple[Any, ...]:
    """(figure, per-class counts, summary, edge galleries) of the band."""
    rest = (mode_v, per_v, out_v, q_v, z_v, t_v, pick_v, enc_v)
    if not generation_id:
        return (gr.skip(), gr.skip(),
                ui.info_md("Generate images and re-encode them (Generate tab) to curate "
                           "them here."), *[gr.skip()] * len(EDGES))
    encodings = _encodings(ctx, generation_id)
    if not encodings:
        return (gr.skip(), gr.skip(),
                ui.info_md("This generation is not re-encoded yet: click 'Re-encode for "
                           "curation' in the Generate tab; the band appears when it is "
                           "done."), *[gr.skip()] * len(EDGES))
    if low_v >= high_v:
        return (gr.skip(), gr.skip(),
                ui.error_md(f"band low ({low_v:.2f}) must be below high ({high_v:.2f})"),
                *[gr.skip()] * len(EDGES))
    v = current_band(ctx, generation_id, low_v, high_v, centroid_v, metric_v, *rest,
                     encodings=encodings)
    return (v["figure"], v["counts"], v["text"], *[v["edges"][k] for k, _ in EDGES])


def preset_values(key: str) -> tuple[str, float, float]:
    """(mode, low, high) of a band preset."""
    band = BandConfig.preset(key, 0.5)
    return "quantile", band.low, band.high


def show_encodings(ctx: StudioContext, generation_id: str | None, enc_v: str | None) -> Any:
    """The encodings that can judge the generation (kept when still one, else the latest)."""
    choices = encoding_choices(ctx, generation_id)
    values = [v for _, v in choices]
    return ui.dropdown(choices, enc_v if enc_v in values else (values[-1] if values else None))


def mode_range(ctx: StudioContext, mode_v, generation_id, centroid_v, metric_v,
               enc_v) -> tuple[Any, Any]:
    """The sliders' range for a band by quantile (0..1) or by distance (the data's range)."""
    if mode_v != "distance":
        return (gr.update(maximum=1.0, step=0.01, value=0.25, label="Band low (quantile)"),
                gr.update(maximum=1.0, step=0.01, value=0.75,
                          label="Band high (quantile)"))
    try:
        bd = _view(ctx, generation_id, centroid_v, metric_v, enc_v)
    except Exception as exc:  # noqa: BLE001 - no view yet: keep a generic range
        log.info("band mode: %s", exc)
        return (gr.update(maximum=2.0, step=0.01, label="Band low (distance)"),
                gr.update(maximum=2.0, step=0.01, label="Band high (distance)"))
    top = float(np.max(bd.distances)) if len(bd.distances) else 1.0
    top = math.ceil(top * 100) / 100 or 1.0
    q1, q3 = np.quantile(bd.distances, [0.25, 0.75]) if len(bd.distances) else (0, top)
    step = max(top / 500, 1e-4)
    return (gr.update(maximum=top, step=step, value=float(q1), label="Band low (distance)"),
            gr.update(maximum=top, step=step, value=float(q3),
                      label="Band high (distance)"))


def select_edge(ctx: StudioContext, key: str, evt: gr.SelectData,
                *values: Any) -> tuple[Any, Any, Any, Any]:
    """A click in edge gallery ``key`` -> (sample, source image, provenance markdown, the
    sample's index: what Keep / Drop / More like this act on)."""
    from engine.stages import curate_stage

    try:
        v = current_band(ctx, *values)
        i = int(v["edge_idx"][key][evt.index])
        info = curate_stage.provenance(ctx.project, v["bd"], i)
        return info["path"], info["source_path"] or None, provenance_md(info), [i]
    except Exception as exc:  # noqa: BLE001 - shown in the panel
        log.info("provenance: %s", exc)
        return gr.skip(), gr.skip(), ui.error_md(exc), gr.skip()


def who(ctx: StudioContext) -> str:
    """Who decides, for a hand decision's provenance: the signed-in user, else the studio."""
    s = ctx.session()
    return f"studio:{s.user}" if s.user else ("studio" if ctx.editor else "studio:visitor")


NEIGHBOURS_K = 12


def hand_decision(ctx: StudioContext, decision: str, picked: list[int] | None,
                  values: tuple[Any, ...], via: str) -> tuple[Any, ...]:
    """Record a hand decision on the picked samples; (status, the band view again)."""
    from engine.stages import curate_stage

    if not picked:
        raise NotReadyError("click a generated image in a gallery first (or find more like "
                            "one, or select points on the map)")
    if not values[0]:
        raise NotReadyError("choose a generation first")
    if any(isinstance(i, str) for i in picked):
        raise NotReadyError("Keep / Drop act on generated images; the one picked is a real "
                            "training image (More like this finds its neighbours and copies)")
    row = curate_stage.record_hand(ctx.project, values[0], [int(i) for i in picked], decision,
                                   by=who(ctx), via=via)
    what = {"keep": "kept by hand", "drop": "dropped by hand",
            "clear": "handed back to the band"}[decision]
    return (ui.ok_md(f"{len(picked):,} image(s) {what} (decision {row.id}); saved selections "
                     f"made from now on include it"), *show_band(ctx, *values))


@ui.guard(1 + 3 + len(EDGES), status=0)
def on_hand(ctx: StudioContext, decision: str, picked: list[int] | None,
            *values: Any) -> tuple[Any, ...]:
    """Keep / drop / hand back to the band the picked samples (a clicked sample, or the
    synthetic images of a "more like this" result); then the band view again."""
    return hand_decision(ctx, decision, picked, values, "curate tab")


@ui.guard(1 + 3 + len(EDGES), status=0)
def on_map_hand(ctx: StudioContext, decision: str, *values: Any) -> tuple[Any, ...]:
    """Keep / drop / hand back the generated images of the session's last lasso or box on
    the map (``selection_answer`` keeps it)."""
    picked = ctx.map_views.picked(ctx.session().id, str(ctx.current().path), values[0])
    if picked is None or not len(picked):
        raise NotReadyError("lasso or box generated images on the map first")
    return hand_decision(ctx, decision, picked.tolist(), values, "map lasso")


@ui.guard(4, status=0)
def on_more_like(ctx: StudioContext, picked: list[int] | None,
                 *values: Any) -> tuple[Any, Any, Any, Any]:
    """"More like this": the nearest real and generated images of the picked image (a
    generated one, or a real training image clicked on the map: then also its copies among
    the generated ones), in the curation encoding (a cached faiss index). Returns (status,
    gallery, the generated neighbours' indices: Keep / Drop all act on them, and every
    neighbour's ref for a click in the gallery: a sample's index or a real image's id)."""
    from engine.stages import curate_stage

    if not picked:
        raise NotReadyError("click a generated image in a gallery (or any point on the map) "
                            "first")
    v = current_band(ctx, *values)
    _indexes_built(ctx, v["bd"])
    real = isinstance(picked[0], str)  # a real image's id; a sample is its index
    query = str(picked[0]) if real else int(picked[0])
    near = curate_stage.neighbours(ctx.project, v["bd"], query, k=NEIGHBOURS_K)
    copies, note = set(), ""
    if real:  # "find copies of this training image" among the generated ones
        found = curate_stage.copies(ctx.project, v["bd"], query, k=NEIGHBOURS_K)
        copies = set(found.loc[found["copy"], "idx"].astype(int).tolist())
        note = (f"; {len(copies)} generated image(s) closer than the copy threshold "
                f"({found.attrs['threshold']:.4f}): near-copies of this training image")
    items = [(ui.gallery_path(r.path), f"{r.kind[:4]} · {r['class']} · {r.distance:.3f}"
              + (f" · {r.hand}" if r.hand else "")
              + (" · copy" if r.kind == "synthetic" and int(r.idx) in copies else ""))
             for _, r in near.iterrows()]
    synthetic = [int(i) for i in near.loc[near["kind"] == "synthetic", "idx"]]
    what = f"real image {query}" if real else f"sample {query}"
    refs = [int(r.idx) if r.kind == "synthetic" else str(r.id) for _, r in near.iterrows()]
    return (ui.info_md(f"{len(near)} nearest images of {what} "
                       f"({near.attrs.get('metric', v['bd'].metric)}): "
                       f"{len(synthetic)} generated, {len(near) - len(synthetic)} real{note}; "
                       f"Keep / Drop below act on the generated ones; click one to pick it "
                       f"(More like this again goes on from it)"),
            items, synthetic, refs)


def select_near(ctx: StudioContext, refs: list[int | str] | None, evt: gr.SelectData,
                *values: Any) -> tuple[Any, Any, Any, Any]:
    """A click in the neighbours gallery -> its provenance and the pick: a generated image
    (its index: Keep / Drop / More like this act on it) or a real one (its id: More like this
    lists its nearest images and its copies), as a click on the map does."""
    from engine.stages import curate_stage

    try:
        if not refs or not 0 <= int(evt.index) < len(refs):
            raise InvalidConfigError("that image is no longer listed: run More like this again")
        ref = refs[int(evt.index)]
        v = map_band(ctx, *values)
        if isinstance(ref, str):
            return real_pick(ctx, v, ref)
        info = curate_stage.provenance(ctx.project, v["bd"], int(ref))
        return info["path"], info["source_path"] or None, provenance_md(info), [int(ref)]
    except Exception as exc:  # noqa: BLE001 - shown in the panel
        log.info("neighbours click: %s", exc)
        return gr.skip(), gr.skip(), ui.error_md(exc), gr.skip()


def real_pick(ctx: StudioContext, v: dict[str, Any], ref: int | str) -> tuple[Any, ...]:
    """A real training image picked (by dataset row or id) -> (no sample, its file, a caption,
    [its id]): More like this then searches from it; Keep / Drop refuse it."""
    images = _images(ctx, v)
    if isinstance(ref, str):
        found = images.index[images["id"].to_numpy() == ref]
        if not len(found):
            raise InvalidConfigError(f"image {ref!r} is not in this dataset")
        ref = int(found[0])
    img = images.loc[int(ref)]
    return (None, str(ctx.project.abs(img["path"])),
            f"**{img['class_name']}** · real training image `{img['id']}` (More like "
            f"this: its nearest images, and its copies among the generated ones)",
            [str(img["id"])])


# ---------------------------------------------------------------------- the 2-D map


MAP_GALLERY = 48  # images of a lasso / box selection shown in its gallery


def _map_config(method_v: str | None, seed_v: Any) -> Any:
    from engine.config import MapConfig

    return MapConfig(method=method_v or "pca", seed=int(seed_v or 0))


def map_band(ctx: StudioContext, generation_id, low_v, high_v, centroid_v, metric_v,
             mode_v="quantile", per_v="", out_v="none", q_v=0.99, z_v=3.5, t_v=0,
             pick_v="centre", enc_v=None) -> dict[str, Any]:
    """What the map handlers need of the band: {"bd", "mask"} (no figure, no galleries: a
    lasso or a hover must stay light at 200,000 points)."""
    from engine.stages import curate_stage

    band = make_band(low_v, high_v, centroid_v, metric_v,
                     **band_options(mode_v, per_v, out_v, q_v, z_v, t_v, pick_v))
    bd = _view(ctx, generation_id, centroid_v, metric_v, enc_v)
    return {"bd": bd, "mask": curate_stage.band_mask(bd, band)}


def _samples(ctx: StudioContext, v: dict[str, Any]) -> pd.DataFrame:
    """The generation's sample rows, read once per view (a lasso of 200,000 points must not
    read 180,000 rows again)."""
    bd = v["bd"]
    if "samples" not in bd.cache:
        bd.cache["samples"] = ctx.project.samples(bd.generation.id)
    return bd.cache["samples"]


def _images(ctx: StudioContext, v: dict[str, Any]) -> pd.DataFrame:
    """The dataset's image rows by ``idx``, read once per view."""
    bd = v["bd"]
    if "images" not in bd.cache:
        bd.cache["images"] = ctx.project.images(bd.generation.dataset_id).set_index("idx")
    return bd.cache["images"]


def map_layout(ctx: StudioContext, v: dict[str, Any], method_v: str | None,
               seed_v: Any) -> Any:
    """The cached ``MapLayout`` of this view's encoding (None when not computed yet)."""
    from engine.stages import map_stage

    return map_stage.find(ctx.project, v["bd"].generation.id, _map_config(method_v, seed_v),
                          v["bd"].encoding.id)


def _layout_arrays(ctx: StudioContext, v: dict[str, Any], row: Any) -> dict[str, np.ndarray]:
    from engine.stages import map_stage

    key = f"layout-{row.id}"
    if key not in v["bd"].cache:
        v["bd"].cache[key] = map_stage.load(ctx.project, row)
    return v["bd"].cache[key]


def _hand_states(ctx: StudioContext, v: dict[str, Any]) -> np.ndarray:
    """(N,) 1 kept by the band, 0 dropped by it, 2 kept by hand, 3 dropped by hand."""
    from engine.stages import curate_stage

    hand = curate_stage.hand_state(ctx.project, v["bd"].generation.id)
    return np.select([hand == 1, hand == -1], [2, 3], v["mask"].astype(np.int64))


def _score_values(ctx: StudioContext, v: dict[str, Any], key: str) -> np.ndarray:
    """(N,) a per-sample score of the generation (``curate_stage.scores``; cached)."""
    from engine.stages import curate_stage

    bd = v["bd"]
    if key == "centroid_distance":
        return bd.distances
    if key == "class_quantile":
        rank, counts = bd.class_ranks()[:2]
        return (rank + 0.5) / np.maximum(counts[bd.labels], 1)
    if key == "fidelity":
        if "fidelity" not in bd.cache:
            bd.cache["fidelity"] = curate_stage.fidelity(ctx.project, bd)
        return bd.cache["fidelity"]
    return _scores(ctx, v)[key].to_numpy(np.float64)


def _indexes_built(ctx: StudioContext, bd: Any) -> None:
    """Nothing heavy in a request: an index too large to build on the spot (more than
    ``knn.EXACT_MAX`` vectors) is built by an ``index`` job, queued here once.

    Raises:
        NotReadyError: the index job is queued or running (its id, and what to do).
    """
    from engine.project import Job
    from engine.stages import curate_stage, index_stage

    pending = curate_stage.indexes_pending(ctx.project, bd)
    if not pending:
        return
    title = index_stage.title(bd)
    job = next((j for j in ctx.project.list(Job, kind="index")
                if j.title == title and j.status in ("queued", "running", "ingesting")), None)
    if job is None:
        job = ctx.submit(index_stage.prepare(ctx.project, bd, pending))
    raise NotReadyError(
        f"the neighbour index of {' and '.join(pending)} images is being built (job {job.id}, "
        f"Jobs tab: minutes at this size, once per encoding); try again when it is done")


def _scores(ctx: StudioContext, v: dict[str, Any]) -> pd.DataFrame:
    """``curate_stage.scores`` of this view in sample order, computed once per view and per
    judging evaluation (a new real-only evaluation of the generation brings its confidence;
    a colouring or a page change recomputes nothing). Its "hand" column may be stale: read
    ``_hand_states`` for that."""
    from engine.stages import curate_stage

    bd = v["bd"]
    judge = curate_stage.judge(ctx.project, bd.generation)
    key = f"scores-{judge.id if judge else ''}"
    if key not in bd.cache:
        for old in [k for k in bd.cache if k.startswith(("scores-", "order-"))]:
            del bd.cache[old]  # another judge's: a newer evaluation replaced it
        _indexes_built(ctx, bd)
        bd.cache[key] = curate_stage.scores(ctx.project, bd)
    return bd.cache[key]


def map_value(ctx: StudioContext, v: dict[str, Any], row: Any, colour_v: str | None,
              values: tuple[Any, ...]) -> dict[str, Any]:
    """The map component's value for a layout, coloured by ``colour_v``; its token lets the
    page ask for selections of this map, in this band (``values``: the band controls), as
    this session (``studio.map_select``)."""
    from studio import map_select, webgl_map

    pts = _layout_arrays(ctx, v, row)
    mode = colour_v or "class"
    bd = v["bd"]
    colours = webgl_map.colour_keys(
        mode, pts["kind"], pts["label"], pts["index"], bd.class_names,
        state=_hand_states(ctx, v) if mode == "kept" else None,
        values=None if mode in ("class", "kept") else _score_values(ctx, v, mode))
    from engine.stages import map_stage

    path = ctx.project.abs(row.folder) / map_stage.POINTS
    title = f"{row.method.upper()} (seed {row.seed}) · {bd.encoding.encoder}"
    token = ctx.map_views.register(map_select.MapView(
        ctx.session().id, str(ctx.current().path), row.id, int(row.count), tuple(values)))
    return webgl_map.payload(f"/gradio_api/file={path}", row.id, row.count, colours,
                             bd.class_names, title, token=token, select=map_select.PATH)


@ui.guard(3, status=2)
def draw_map(ctx: StudioContext, method_v: str, seed_v: Any, colour_v: str,
             *values: Any) -> tuple[Any, Any, Any]:
    """"Draw map": the cached layout at once; else a map job, drawn when it is done
    (``refresh_map``). Returns (map value, map state, status)."""
    from engine.stages import map_stage

    v = map_band(ctx, *values)
    row = map_layout(ctx, v, method_v, seed_v)
    if row is not None:
        return (map_value(ctx, v, row, colour_v, values), {"map": row.id},
                ui.info_md(f"{row.count:,} points ({row.n_real:,} real, {row.n_syn:,} "
                           f"generated), laid out once by job {row.job_id or '-'}; drag to "
                           f"pan, wheel to zoom, Lasso / Box to select"))
    config = _map_config(method_v, seed_v)
    job = ctx.submit(map_stage.prepare(ctx.project, config, v["bd"].generation.id,
                                       v["bd"].encoding.id))
    return (gr.skip(), {"wait": job.id},
            ui.info_md(f"computing the {config.method} layout (job {job.id}, Jobs tab); the "
                       f"map appears here when it is done"))


def recolour(ctx: StudioContext, state: dict[str, Any] | None, method_v: str, seed_v: Any,
             colour_v: str, *values: Any) -> Any:
    """Recolour the map as the band, the colouring or the hand decisions change (the points
    stay in the browser: only a byte per point travels)."""
    if not state or not state.get("map") or not values[0]:
        return gr.skip()
    try:
        v = map_band(ctx, *values)
        row = map_layout(ctx, v, method_v, seed_v)
        return gr.skip() if row is None else map_value(ctx, v, row, colour_v, values)
    except Exception as exc:  # noqa: BLE001 - the band view shows the error
        log.info("map: %s", exc)
        return gr.skip()


def refresh_map(ctx: StudioContext, state: dict[str, Any] | None, method_v: str, seed_v: Any,
                colour_v: str, *values: Any) -> tuple[Any, Any, Any]:
    """When a map job finishes (the project's revision changes): draw the map it waited for."""
    if not state or not state.get("wait") or not values[0]:
        return gr.skip(), gr.skip(), gr.skip()
    try:
        v = map_band(ctx, *values)
        row = map_layout(ctx, v, method_v, seed_v)
    except Exception as exc:  # noqa: BLE001 - the band view shows the error
        log.info("map: %s", exc)
        return gr.skip(), gr.skip(), gr.skip()
    if row is None:
        from engine.project import Job

        job = ctx.project.get(Job, state["wait"])
        if job.status in ("failed", "cancelled", "interrupted"):
            return gr.skip(), {}, ui.error_md(f"the map job {job.status}: {job.error}")
        return gr.skip(), gr.skip(), gr.skip()
    return (map_value(ctx, v, row, colour_v, values), {"map": row.id},
            ui.info_md(f"{row.count:,} points ({row.n_real:,} real, {row.n_syn:,} generated)"))


def _map_rows(ctx: StudioContext, v: dict[str, Any], state: dict[str, Any] | None) -> Any:
    from engine.project import MapLayout

    if not state or not state.get("map"):
        raise NotReadyError("draw the map first")
    row = ctx.project.get(MapLayout, state["map"])
    return row, _layout_arrays(ctx, v, row)


def selection_answer(ctx: StudioContext, view: Any, rows: np.ndarray) -> dict[str, Any]:
    """A lasso or a box on the map (``rows`` of the layout of map ``view``) -> the selection's
    status line and gallery, as the map's script draws them (``studio.map_select``); the
    generated images' sample indices are kept as the session's selection: what the map's
    Keep / Drop act on. With "Sort a selection by ..." the gallery follows "Browse by
    score"'s score and order, else sample order."""
    from engine.project import MapLayout
    from studio import map_select

    v = map_band(ctx, *view.values)
    row = ctx.project.get(MapLayout, view.layout)
    pts = _layout_arrays(ctx, v, row)
    syn_rows = rows[pts["kind"][rows] == 1]
    picked = np.sort(pts["index"][syn_rows])
    n_real = len(rows) - len(syn_rows)
    session = ctx.session().id
    sort_v, key, order_v = ctx.map_views.sort(session)
    sorted_by = ""
    if len(picked) and sort_v and key:
        from engine.stages.curate_stage import SCORE_KEYS

        if key not in SCORE_KEYS:
            raise InvalidConfigError(f"score must be one of {SCORE_KEYS}, got {key!r}")
        order = _order(ctx, v, key, order_v == "descending")  # cached per view
        picked = order[np.isin(order, picked)]
        sorted_by = f"; sorted by {key}, {order_v or 'ascending'}"
    ctx.map_views.remember(session, map_select.Picked(
        view.project, v["bd"].generation.id, picked.astype(np.int64)))
    if len(rows) == 0:
        return {"text": "nothing selected", "items": [], "selected": 0}
    states = _hand_states(ctx, v)[picked]
    samples = _samples(ctx, v)
    names = v["bd"].class_names
    shown = picked[:MAP_GALLERY]
    score = _score_values(ctx, v, key) if sorted_by else v["bd"].distances
    items = [{"src": f"/gradio_api/file={ui.gallery_path(ctx.project.abs(samples['path'].iat[i]))}",
              "caption": f"{names[int(v['bd'].labels[i])]} · {score[i]:.4g}", "i": i}
             for i in shown.tolist()]
    text = (f"{len(rows):,} points selected: {len(picked):,} generated "
            f"({int(np.isin(states, (1, 2)).sum()):,} kept, "
            f"{int(np.isin(states, (0, 3)).sum()):,} dropped now), {n_real:,} real"
            + (f"; the gallery shows the first {len(shown)}" if len(picked) > len(shown) else "")
            + sorted_by + "; Keep / Drop below act on the generated ones")
    return {"text": text, "items": items, "selected": int(len(rows)),
            "generated": int(len(picked))}


def note_map_sort(ctx: StudioContext, sort_v: bool, key: str | None,
                  order_v: str | None) -> None:
    """Remember the order the map's selection gallery should follow for this session."""
    ctx.map_views.set_sort(ctx.session().id, bool(sort_v), key, order_v)


def on_map_click(ctx: StudioContext, state: dict[str, Any] | None, evt: gr.EventData,
                 *values: Any) -> tuple[Any, Any, Any, Any]:
    """A click on a point, or on a thumbnail of the selection's gallery (``{"sample": i}``):
    its provenance (a generated image: as in the galleries, and Keep / Drop / More like this
    act on it; a real image: its file)."""
    from engine.stages import curate_stage

    try:
        v = map_band(ctx, *values)
        data = getattr(evt, "_data", None) or {}
        if "sample" in data:
            i = int(data["sample"])
            if not 0 <= i < len(v["bd"].labels):
                raise InvalidConfigError(f"sample {i} is not in this generation")
            info = curate_stage.provenance(ctx.project, v["bd"], i)
            return info["path"], info["source_path"] or None, provenance_md(info), [i]
        row, pts = _map_rows(ctx, v, state)
        r = int(data.get("row", -1))
        if not 0 <= r < row.count:
            raise InvalidConfigError(f"point {r} is not on the map")
        i = int(pts["index"][r])
        if pts["kind"][r] == 1:
            info = curate_stage.provenance(ctx.project, v["bd"], i)
            return info["path"], info["source_path"] or None, provenance_md(info), [i]
        return real_pick(ctx, v, i)
    except Exception as exc:  # noqa: BLE001 - shown in the panel
        log.info("map click: %s", exc)
        return gr.skip(), gr.skip(), ui.error_md(exc), gr.skip()


def on_map_hover(ctx: StudioContext, state: dict[str, Any] | None, evt: gr.EventData,
                 *values: Any) -> tuple[Any, Any]:
    """The point under the pointer: its thumbnail and a caption."""
    try:
        v = map_band(ctx, *values)
        row, pts = _map_rows(ctx, v, state)
        r = int((getattr(evt, "_data", None) or {}).get("row", -1))
        if not 0 <= r < row.count:
            return gr.skip(), gr.skip()
        i, bd = int(pts["index"][r]), v["bd"]
        if pts["kind"][r] == 1:
            path = _samples(ctx, v)["path"].iat[i]
            text = (f"generated · {bd.class_names[int(bd.labels[i])]} · distance "
                    f"{bd.distances[i]:.3f}")
        else:
            img = _images(ctx, v).loc[i]
            path, text = img["path"], f"real · {img['class_name']}"
        return ui.gallery_path(ctx.project.abs(path)), text
    except Exception as exc:  # noqa: BLE001 - a hover is a nicety
        log.info("map hover: %s", exc)
        return gr.skip(), gr.skip()


# ---------------------------------------------------------------------- browse by score


BROWSE_PAGE = 48  # images per page of the browse-by-score gallery
BROWSE_WHICH = [("all samples", "all"), ("kept (band + hand)", "kept"),
                ("dropped (band + hand)", "dropped")]
ALL_CLASSES = "(all classes)"
STATE_NAMES = ("dropped", "kept", "kept by hand", "dropped by hand")  # _hand_states' values


def score_choices() -> list[tuple[str, str]]:
    """(label, key) of every per-sample score (``curate_stage.SCORE_KEYS``), labelled as the
    map's colour keys."""
    from engine.stages.curate_stage import SCORE_KEYS

    labels = {key: label for label, key in webgl_map.COLOUR_BY}
    return [(labels.get(k, k), k) for k in SCORE_KEYS]


def _order(ctx: StudioContext, v: dict[str, Any], key: str, descending: bool) -> np.ndarray:
    """(N,) sample indices sorted by score ``key`` (samples without a value last), cached
    on the view per score and direction (``_scores`` drops the cached orders when another
    evaluation becomes the judge)."""
    values = _score_values(ctx, v, key)  # first: it may drop stale orders
    cache_key = f"order-{key}-{int(descending)}"
    bd = v["bd"]
    if cache_key not in bd.cache:
        x = np.asarray(values, dtype=np.float64)
        bd.cache[cache_key] = np.argsort(-x if descending else x, kind="stable")  # NaN last
    return bd.cache[cache_key]


def browse_view(ctx: StudioContext, key: str, order_v: str, which: str, class_v: str | None,
                page: Any, *values: Any) -> dict[str, Any]:
    """One page of the generation's samples sorted by a score.

    Args:
        key: one of ``curate_stage.SCORE_KEYS``.
        order_v: "ascending" or "descending".
        which: "all", "kept" or "dropped" (by the band, then the hand decisions).
        class_v: a class name, or None / ``ALL_CLASSES``.
        page: page number, >= 0 (past the last page: the last page).
        values: the band's widgets (``BAND_INPUTS``' order).

    Returns:
        {"items": [(path, caption)], "shown": sample indices of the page, "page", "pages",
         "total" (samples that pass the filters), "classes": class names, "text"}.
    """
    from engine.stages.curate_stage import SCORE_KEYS

    if key not in SCORE_KEYS:
        raise InvalidConfigError(f"score must be one of {SCORE_KEYS}, got {key!r}")
    if order_v not in ("ascending", "descending"):
        raise InvalidConfigError(f"order must be ascending or descending, got {order_v!r}")
    if which not in [w for _, w in BROWSE_WHICH]:
        raise InvalidConfigError(f"which must be all, kept or dropped, got {which!r}")
    try:
        page = int(page or 0)
    except (TypeError, ValueError):
        raise InvalidConfigError(f"page must be a whole number, got {page!r}") from None
    if page < 0:
        raise InvalidConfigError(f"page must be >= 0, got {page}")
    v = map_band(ctx, *values)  # the band's mask, no figure
    bd = v["bd"]
    order = _order(ctx, v, key, order_v == "descending")
    states = _hand_states(ctx, v)  # (N,) fresh: hand decisions change it
    keep = np.ones(len(states), dtype=bool)
    if which != "all":
        keep = np.isin(states, (1, 2)) if which == "kept" else np.isin(states, (0, 3))
    if class_v and class_v != ALL_CLASSES:
        if class_v not in bd.class_names:
            raise InvalidConfigError(f"class {class_v!r} is not a class of this dataset")
        keep &= bd.labels == bd.class_names.index(class_v)
    rows = order[keep[order]]  # sorted, filtered
    pages = max(1, math.ceil(len(rows) / BROWSE_PAGE))
    page = min(page, pages - 1)
    shown = rows[page * BROWSE_PAGE:(page + 1) * BROWSE_PAGE]
    score = _score_values(ctx, v, key)
    samples = _samples(ctx, v)
    items = [(ui.gallery_path(ctx.project.abs(samples["path"].iat[i])),
              f"{'–' if np.isnan(score[i]) else f'{score[i]:.4g}'} · "
              f"{bd.class_names[int(bd.labels[i])]} · {STATE_NAMES[int(states[i])]}")
             for i in shown.tolist()]
    label = dict((k, lab) for lab, k in score_choices())[key]
    missing = int(np.isnan(score[rows]).sum()) if len(rows) else 0
    text = (f"{len(rows):,} samples ({which}"
            + (f", class {class_v}" if class_v and class_v != ALL_CLASSES else "")
            + f") by {label}, {order_v}: page {page + 1} of {pages}"
            + (f" (samples {page * BROWSE_PAGE + 1:,}–{page * BROWSE_PAGE + len(shown):,})"
               if len(shown) else "")
            + (f"; {missing:,} without a value come last" if missing else ""))
    if key == "confidence":
        text += "; " + next((n for n in _scores(ctx, v).attrs["notes"]
                             if "confidence" in n), "")
    return {"items": items, "shown": shown, "page": page, "pages": pages,
            "total": int(len(rows)), "classes": list(bd.class_names), "text": text}


@ui.guard(5, status=0)
def on_browse(ctx: StudioContext, key: str, order_v: str, which: str, class_v: str | None,
              page: Any, *values: Any) -> tuple[Any, ...]:
    """"Browse by score": (status, gallery, page number, class choices, the page's sample
    indices: what Keep / Drop this page act on)."""
    if not values or not values[0]:
        raise NotReadyError("choose a re-encoded generation first")
    b = browse_view(ctx, key, order_v, which, class_v, page, *values)
    classes = [ALL_CLASSES, *b["classes"]]
    return (ui.info_md(b["text"]), b["items"], b["page"],
            gr.update(choices=classes, value=class_v if class_v in classes else ALL_CLASSES),
            [int(i) for i in b["shown"]])


def browse_step(page: Any, step: int) -> int:
    """The page number after a Previous (-1) / Next (+1) click, never below 0 (the view
    clamps it to the last page)."""
    try:
        return max(0, int(page or 0) + step)
    except (TypeError, ValueError):
        return 0


def on_browse_step(ctx: StudioContext, step: int, key: str, order_v: str, which: str,
                   class_v: str | None, page: Any, *values: Any) -> tuple[Any, ...]:
    """Previous / Next page (the sort order is cached: nothing is recomputed)."""
    return on_browse(ctx, key, order_v, which, class_v, browse_step(page, step), *values)


def on_browse_first(ctx: StudioContext, key: str, order_v: str, which: str,
                    class_v: str | None, *values: Any) -> tuple[Any, ...]:
    """Another score, order, filter or class: back to the first page."""
    return on_browse(ctx, key, order_v, which, class_v, 0, *values)


def refresh_browse(ctx: StudioContext, shown: list[int] | None, key: str, order_v: str,
                   which: str, class_v: str | None, page: Any, *values: Any
                   ) -> tuple[Any, ...]:
    """After a hand decision: the browse page again (its captions and, filtered by kept or
    dropped, its members change), only when a page is shown."""
    if not shown:
        return (gr.skip(),) * 5
    return on_browse(ctx, key, order_v, which, class_v, page, *values)


def select_browse(ctx: StudioContext, shown: list[int] | None, evt: gr.SelectData,
                  *values: Any) -> tuple[Any, Any, Any, Any]:
    """A click in the browse gallery -> (sample, source image, provenance markdown, the
    sample's index: what Keep / Drop / More like this act on), as in the edge galleries."""
    from engine.stages import curate_stage

    try:
        if not shown or not 0 <= int(evt.index) < len(shown):
            raise InvalidConfigError("that image is no longer on this page: browse again")
        i = int(shown[int(evt.index)])
        v = map_band(ctx, *values)
        info = curate_stage.provenance(ctx.project, v["bd"], i)
        return info["path"], info["source_path"] or None, provenance_md(info), [i]
    except Exception as exc:  # noqa: BLE001 - shown in the panel
        log.info("provenance: %s", exc)
        return gr.skip(), gr.skip(), ui.error_md(exc), gr.skip()


@ui.guard(1 + 3 + len(EDGES), status=0)
def on_browse_hand(ctx: StudioContext, decision: str, shown: list[int] | None,
                   *values: Any) -> tuple[Any, ...]:
    """Keep / drop every sample of the browse gallery's page; then the band view again."""
    return hand_decision(ctx, decision, shown, values, "browse by score")


@ui.guard(4, status=0)
def on_metrics(ctx: StudioContext, *values: Any) -> tuple[Any, ...]:
    overall, per_class_t, fig, text = metrics_view(ctx, current_band(ctx, *values))
    return text, overall, fig, per_class_t


@ui.guard(3)
def on_save(ctx: StudioContext, generation_id, low_v, high_v, centroid_v, metric_v, name_v,
            mode_v="quantile", per_v="", out_v="none", q_v=0.99, z_v=3.5, t_v=0,
            pick_v="centre", enc_v=None) -> tuple[Any, ...]:
    sel = save(ctx, generation_id, low_v, high_v, centroid_v, metric_v, name_v, enc_v,
               **band_options(mode_v, per_v, out_v, q_v, z_v, t_v, pick_v))
    return (ui.ok_md(f"saved selection {sel.name}: {sel.count:,} images"),
            selections_table(ctx), "")


def combine_choices(ctx: StudioContext, a: str | None, b: str | None) -> tuple[Any, Any]:
    choices = selection_choices(ctx)
    return ui.dropdown(choices, a), ui.dropdown(choices, b)


@ui.guard(5)
def on_combine(ctx: StudioContext, a: str | None, op: str, b: str | None,
               name_v: str | None) -> tuple[Any, ...]:
    from engine.stages import curate_stage

    if not a or not b:
        raise NotReadyError("choose two selections to combine")
    sel = curate_stage.combine(ctx.project, a, b, op, (name_v or "").strip() or f"{op}-selection")
    return (ui.ok_md(f"saved selection {sel.name}: {sel.count:,} images ({op})"),
            selections_table(ctx), "", *combine_choices(ctx, a, b))


def refresh(ctx: StudioContext, generation_id, low_v, high_v, centroid_v, metric_v,
            *rest: Any) -> tuple[Any, ...]:
    """The generation, selection and encoding lists; the band redrawn when it may change."""
    choices = curatable_choices(ctx)
    values = [v for _, v in choices]
    if generation_id and generation_id in values:
        # same generation: redraw (it may just have been re-encoded: a new encoding to
        # judge by appears in the list)
        enc_choices = encoding_choices(ctx, generation_id)
        enc_values = [v for _, v in enc_choices]
        enc_v = rest[-1] if rest and rest[-1] in enc_values else \
            (enc_values[-1] if enc_values else None)
        band = show_band(ctx, generation_id, low_v, high_v, centroid_v, metric_v, *rest[:-1],
                         enc_v)
        enc_update = ui.dropdown(enc_choices, enc_v)
    else:  # a new value: its change event draws the band and fills the encodings
        band = (gr.skip(),) * (3 + len(EDGES))
        enc_update = gr.skip()
    sels = selection_choices(ctx)
    return (ui.dropdown(choices, generation_id), selections_table(ctx),
            gr.update(choices=sels), gr.update(choices=sels), enc_update, *band)


# ---------------------------------------------------------------------- layout and wiring


def build(ctx: StudioContext, shared: Shared) -> None:
    with gr.Row():
        with gr.Column(scale=2, min_width=360):
            with gr.Row():
                generation = gr.Dropdown(label="Generation (re-encoded)", choices=[],
                                         value=None, allow_custom_value=True,
                                         elem_id="curate-gen", scale=3)
                encoding = gr.Dropdown(label="Judged by (encoding)", choices=[], value=None,
                                       allow_custom_value=True, elem_id="curate-encoding",
                                       scale=2)
            with gr.Row():
                centroid = gr.Radio(["real", "generated", "both"], value="real",
                                    label="Class centroid of", elem_id="curate-centroid")
                metric = gr.Radio(["cosine", "euclidean"], value="cosine", label="Distance",
                                  elem_id="curate-metric")
            mode = gr.Radio(["quantile", "distance"], value="quantile", label="Band by",
                            elem_id="band-mode")
            low = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="Band low (quantile)",
                            elem_id="band-low")
            high = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Band high (quantile)",
                             elem_id="band-high")
            with gr.Row():
                presets = [gr.Button(label, size="sm", min_width=150,
                                     variant="primary" if key == "middle" else "secondary",
                                     elem_id=f"preset-{key}") for label, key in PRESETS]
            with gr.Accordion("Per class, outliers, target count", open=False,
                              elem_id="band-options"):
                per_class = gr.Textbox(label="Per-class bands (CLASS=LOW:HIGH, one per line)",
                                       lines=2, value="", placeholder="e.g. 7=0.1:0.6",
                                       elem_id="band-per-class")
                with gr.Row():
                    outlier = gr.Radio(["none", "real", "zscore"], value="none",
                                       label="Outlier removal", elem_id="band-outlier")
                    outlier_q = gr.Number(value=0.99, label="real: quantile q", minimum=0.5,
                                          maximum=1.0, step=0.01, elem_id="band-outlier-q")
                    outlier_z = gr.Number(value=3.5, label="zscore: z", minimum=0.5,
                                          step=0.5, elem_id="band-outlier-z")
                with gr.Row():
                    target = gr.Number(value=0, label="Target per class (0: off)", minimum=0,
                                       precision=0, elem_id="band-target")
                    target_pick = gr.Radio(["centre", "random"], value="centre",
                                           label="Keep", elem_id="band-target-pick")
            summary_md = gr.Markdown(elem_id="band-summary")
        with gr.Column(scale=5):
            plot = gr.Plot(show_label=False, elem_id="band-plot")
    galleries = {}
    with gr.Row():
        # a caption above each gallery (a label would cover its first row) and its
        # EDGE_K images whole: no scroll box
        for key, label in EDGES:
            with gr.Column(min_width=200, elem_classes=["edge-gallery"]):
                gr.Markdown(label, elem_classes=["image-caption"])
                galleries[key] = gr.Gallery(show_label=False, columns=4, height="auto",
                                            object_fit="contain", allow_preview=True,
                                            fit_columns=False,
                                            elem_id=f"edge-{key.replace('_', '-')}",
                                            elem_classes=["captioned"])
    with gr.Row(elem_id="provenance"):
        prov_sample = gr.Image(label="Sample", height=150, interactive=False,
                               elem_id="provenance-sample")
        prov_source = gr.Image(label="Source image", height=150, interactive=False,
                               elem_id="provenance-source")
        prov_text = gr.Markdown("Click a sample in a gallery to see where it comes from.",
                                elem_id="provenance-text")
    with gr.Row(elem_classes=["bottom-align"]):
        keep_btn = gr.Button("Keep by hand", size="sm", elem_id="hand-keep")
        drop_btn = gr.Button("Drop by hand", size="sm", elem_id="hand-drop")
        clear_btn = gr.Button("Back to the band", size="sm", elem_id="hand-clear")
        more_btn = gr.Button("More like this", size="sm", variant="primary",
                             elem_id="more-like-this")
    hand_status = gr.HTML(elem_id="hand-status")
    with gr.Accordion("More like this: nearest real and generated images", open=True,
                      elem_id="neighbours-panel"):
        near_gallery = gr.Gallery(columns=6, height=190, object_fit="contain",
                                  allow_preview=True, fit_columns=False, show_label=False,
                                  elem_id="neighbours-gallery")
        with gr.Row():
            keep_near = gr.Button("Keep these generated images", size="sm",
                                  elem_id="neighbours-keep")
            drop_near = gr.Button("Drop these generated images", size="sm",
                                  elem_id="neighbours-drop")
    with gr.Accordion("Browse by score", open=False, elem_id="browse-panel"):
        with gr.Row(elem_classes=["bottom-align"]):
            browse_key = gr.Dropdown(score_choices(), value="centroid_distance", label="Score",
                                     elem_id="browse-score", scale=3)
            browse_order = gr.Radio(["ascending", "descending"], value="ascending",
                                    label="Order", elem_id="browse-order", scale=2)
            browse_which = gr.Radio(BROWSE_WHICH, value="all", label="Samples",
                                    elem_id="browse-which", scale=3)
            browse_class = gr.Dropdown([ALL_CLASSES], value=ALL_CLASSES, label="Class",
                                       allow_custom_value=True, elem_id="browse-class",
                                       scale=2)
        with gr.Row(elem_classes=["bottom-align"]):
            browse_btn = gr.Button("Browse", variant="primary", elem_id="browse-button",
                                   scale=1)
            browse_prev = gr.Button("◀ Previous", size="sm", elem_id="browse-prev", scale=1)
            browse_page = gr.Number(value=0, precision=0, minimum=0, label="Page (0: first)",
                                    elem_id="browse-page", scale=1, min_width=110)
            browse_next = gr.Button("Next ▶", size="sm", elem_id="browse-next", scale=1)
            browse_keep = gr.Button("Keep this page", size="sm", elem_id="browse-keep",
                                    scale=1)
            browse_drop = gr.Button("Drop this page", size="sm", elem_id="browse-drop",
                                    scale=1)
        browse_status = gr.HTML(elem_id="browse-status")
        browse_gallery = gr.Gallery(columns=8, height="auto", object_fit="contain",
                                    allow_preview=True, fit_columns=False, show_label=False,
                                    elem_id="browse-gallery", elem_classes=["captioned"])
    browse_shown = gr.State([])  # sample indices of the page shown (Keep / Drop this page)
    picked = gr.State([])  # the clicked sample's index (a real image's id: map, neighbours)
    near_picked = gr.State([])  # the generated images of the last "more like this"
    near_refs = gr.State([])  # each of its images: a sample's index or a real image's id
    with gr.Row():
        with gr.Column(scale=3):
            counts = gr.Dataframe(label="Per class", interactive=False,
                                  max_height=TABLE_HEIGHT, elem_id="band-counts")
        with gr.Column(scale=2, min_width=320):
            with gr.Row(elem_classes=["bottom-align"]):
                name = gr.Textbox(label="Selection name",
                                  placeholder="default: <generation>-band-…", scale=2,
                                  elem_id="selection-name")
                save_btn = gr.Button("Save selection", variant="primary", scale=1,
                                     min_width=160, elem_id="save-selection")
            status = gr.HTML(elem_id="curate-status")
            selections = gr.Dataframe(label="Selections", interactive=False, max_height=220,
                                      value=ui.initial(selections_table, ctx), elem_id="selections-table")
            with gr.Row(elem_classes=["bottom-align"]):
                comb_a = gr.Dropdown(label="A", choices=[], value=None, elem_id="combine-a")
                comb_op = gr.Dropdown(["union", "intersection", "difference"],
                                      value="union", label="op", elem_id="combine-op")
                comb_b = gr.Dropdown(label="B", choices=[], value=None, elem_id="combine-b")
            with gr.Row(elem_classes=["bottom-align"]):
                comb_name = gr.Textbox(label="Combined selection name", scale=2,
                                       elem_id="combine-name")
                comb_btn = gr.Button("Combine", scale=1, elem_id="combine-button")
    with gr.Accordion("2-D map of the representations", open=False, elem_id="map-panel"):
        with gr.Row(elem_classes=["bottom-align"]):
            map_method = gr.Radio(["pca", "tsne", "umap"], value="pca", label="Projection",
                                  info="computed once per encoding and seed (a job), then "
                                       "reused; umap needs pip install 'rcdm-studio[map]'",
                                  elem_id="map-method", scale=3)
            map_seed = gr.Number(value=0, precision=0, minimum=0, label="Seed",
                                 elem_id="map-seed", scale=1, min_width=90)
            map_colour = gr.Dropdown(webgl_map.COLOUR_BY, value="kept", label="Colour by",
                                     elem_id="map-colour", scale=2)
            map_sort = gr.Checkbox(False, label="Sort a selection by the score of "
                                                "'Browse by score'", elem_id="map-sort",
                                   scale=2)
            map_btn = gr.Button("Draw map", variant="primary", elem_id="map-button", scale=1)
        map_state = gr.State({})  # {"map": layout id} once drawn, {"wait": job id} meanwhile
        map_status = gr.Markdown(elem_id="map-status")
        with gr.Row():
            with gr.Column(scale=5):
                map_view = gr.HTML(None, html_template=webgl_map.TEMPLATE,
                                   css_template=webgl_map.CSS, js_on_load=webgl_map.JS,
                                   apply_default_css=False, elem_id="band-map")
            with gr.Column(scale=1, min_width=170):
                map_hover = gr.Image(label="Under the pointer", height=150,
                                     interactive=False, elem_id="map-hover")
                map_hover_text = gr.Markdown(elem_id="map-hover-text")
        with gr.Row():
            map_keep = gr.Button("Keep the selected generated images", size="sm",
                                 elem_id="map-keep")
            map_drop = gr.Button("Drop the selected generated images", size="sm",
                                 elem_id="map-drop")
            map_clear = gr.Button("Hand them back to the band", size="sm",
                                  elem_id="map-clear")
    with gr.Accordion("Metrics of the kept samples", open=False, elem_id="metrics-panel"):
        metrics_btn = gr.Button("Compute metrics", variant="primary", elem_id="metrics-button")
        metrics_text = gr.Markdown(elem_id="metrics-text")
        with gr.Row():
            metrics_table = gr.Dataframe(label="Overall", interactive=False,
                                         elem_id="metrics-table")
        metrics_dash = gr.Plot(show_label=False, elem_id="metrics-dashboard")
        metrics_class = gr.Dataframe(label="Per class", interactive=False,
                                     max_height=TABLE_HEIGHT, elem_id="metrics-per-class")

    # the first five inputs are the original /band API (clients may pass only those)
    options = [mode, per_class, outlier, outlier_q, outlier_z, target, target_pick, encoding]
    inputs = [generation, low, high, centroid, metric, *options]
    outputs = [plot, counts, summary_md, *galleries.values()]
    # One listener for every input: a preset sets both sliders, the band is drawn once.
    band_inputs = [generation, centroid, metric, low, high, mode, per_class, outlier,
                   outlier_q, outlier_z, target, target_pick, encoding]
    triggers = [c.change for c in band_inputs if c is not per_class] + [per_class.submit,
                                                                      per_class.blur]
    provenance = [prov_sample, prov_source, prov_text]
    metrics_out = [metrics_text, metrics_table, metrics_dash, metrics_class]
    combine_out = [status, selections, comb_name, comb_a, comb_b]

    gr.on(triggers, ui.bind(show_band, ctx), inputs, outputs, show_progress="minimal",
          trigger_mode="always_last", api_name="band")
    for (_, key), btn in zip(PRESETS, presets):
        btn.click(functools.partial(preset_values, key), None, [mode, low, high])
    generation.change(ui.bind(show_encodings, ctx), [generation, encoding], encoding)
    mode.input(ui.bind(mode_range, ctx), [mode, generation, centroid, metric, encoding],
               [low, high])
    for key, gallery in galleries.items():
        gallery.select(ui.bind(select_edge, ctx, key), inputs, [*provenance, picked])
    hand_out = [hand_status, *outputs]
    browse_form = [browse_key, browse_order, browse_which, browse_class]
    browse_out = [browse_status, browse_gallery, browse_page, browse_class, browse_shown]
    for btn, state, decision in ((keep_btn, picked, "keep"), (drop_btn, picked, "drop"),
                                 (clear_btn, picked, "clear"), (keep_near, near_picked, "keep"),
                                 (drop_near, near_picked, "drop")):
        btn.click(ui.bind(on_hand, ctx, decision), [state, *inputs], hand_out,
                  concurrency_id="curate-hand").then(  # a page shown: its captions change
            ui.bind(refresh_browse, ctx), [browse_shown, *browse_form, browse_page, *inputs],
            browse_out, show_progress="hidden")
    browse_btn.click(ui.bind(on_browse, ctx), [*browse_form, browse_page, *inputs], browse_out,
                     api_name="browse_by_score")
    for c in browse_form:
        c.input(ui.bind(on_browse_first, ctx), [*browse_form, *inputs], browse_out,
                trigger_mode="always_last")
    for btn, step in ((browse_prev, -1), (browse_next, 1)):
        btn.click(ui.bind(on_browse_step, ctx, step), [*browse_form, browse_page, *inputs],
                  browse_out)
    browse_page.submit(ui.bind(on_browse, ctx), [*browse_form, browse_page, *inputs],
                       browse_out)
    browse_gallery.select(ui.bind(select_browse, ctx), [browse_shown, *inputs],
                          [*provenance, picked])
    for btn, decision in ((browse_keep, "keep"), (browse_drop, "drop")):
        btn.click(ui.bind(on_browse_hand, ctx, decision), [browse_shown, *inputs], hand_out,
                  concurrency_id="curate-hand").then(
            ui.bind(refresh_browse, ctx), [browse_shown, *browse_form, browse_page, *inputs],
            browse_out, show_progress="hidden")
    more_btn.click(ui.bind(on_more_like, ctx), [picked, *inputs],
                   [hand_status, near_gallery, near_picked, near_refs],
                   api_name="more_like_this")
    near_gallery.select(ui.bind(select_near, ctx), [near_refs, *inputs], [*provenance, picked])
    map_opts = [map_state, map_method, map_seed, map_colour]
    map_btn.click(ui.bind(draw_map, ctx), [map_method, map_seed, map_colour, *inputs],
                  [map_view, map_state, map_status], api_name="band_map")
    gr.on([*triggers, map_colour.change], ui.bind(recolour, ctx), [*map_opts, *inputs],
          map_view, show_progress="hidden", trigger_mode="always_last")
    # a lasso / box goes straight to studio.map_select (no event); its gallery order:
    for c in (map_sort, browse_key, browse_order):
        c.change(ui.bind(note_map_sort, ctx), [map_sort, browse_key, browse_order], None,
                 show_progress="hidden", api_visibility="private")
    map_view.click(ui.bind(on_map_click, ctx), [map_state, *inputs], [*provenance, picked],
                   show_progress="hidden")
    map_view.input(ui.bind(on_map_hover, ctx), [map_state, *inputs],
                   [map_hover, map_hover_text], trigger_mode="always_last",
                   show_progress="hidden")
    for btn, decision in ((map_keep, "keep"), (map_drop, "drop"), (map_clear, "clear")):
        btn.click(ui.bind(on_map_hand, ctx, decision), inputs, hand_out,
                  concurrency_id="curate-hand").then(
            ui.bind(recolour, ctx), [*map_opts, *inputs], map_view, show_progress="hidden")
    shared.on_refresh(ui.bind(refresh_map, ctx), [*map_opts, *inputs],
                      [map_view, map_state, map_status])
    metrics_btn.click(ui.bind(on_metrics, ctx), inputs, metrics_out, api_name="metrics")
    save_btn.click(ui.bind(on_save, ctx), [generation, low, high, centroid, metric, name,
                                          *options],
                   [status, selections, name], api_name="save_selection").then(
        ui.bind(combine_choices, ctx), [comb_a, comb_b], [comb_a, comb_b],
        api_visibility="private")
    comb_btn.click(ui.bind(on_combine, ctx), [comb_a, comb_op, comb_b, comb_name], combine_out,
                   api_name="combine")
    shared.on_refresh(ui.bind(refresh, ctx), inputs,
                      [generation, selections, comb_a, comb_b, encoding, *outputs])
