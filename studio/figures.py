"""Plotly figures of engine results: the band, the 2-D map, the per-class dashboard,
experiments, an evaluation's page (per-class accuracy, confusion matrix, curves) and runs
compared (their curves overlaid).

The engine computes (``engine.curation``, ``engine.experiments``); these functions only draw
what it returns. Every figure uses the "plotly_white" template and reads well at 1280 x 800.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from engine.curation.arrays import check_distances
from engine.curation.bands import box_stats, kept_range
from engine.errors import InvalidConfigError

ACCURACY_RANGE = [0.0, 105.0]  # every accuracy axis: from 0 (room above 100 for the labels)
RUN_COLORS = px.colors.qualitative.Plotly  # one colour per run in the compare charts
CONFUSION_CELLS_MAX = 50  # classes beyond which the heatmap is left out (the table stays)

EXPERIMENT_TITLES = {
    "scaling": "Synthetic-only training at 1x..4x the real set (paper Fig. 2)",
    "augmentation": "Real + classical augmentation vs real + synthetic (paper Table 2)",
    "filtering": "Unfiltered 1x vs the middle band of 2x (paper Table 1)",
}


def band_figure(distances: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                mask: np.ndarray, real_distances: np.ndarray | None = None,
                real_labels: np.ndarray | None = None, *, metric: str = "cosine",
                stats: tuple[pd.DataFrame, pd.DataFrame | None] | None = None,
                edges: np.ndarray | None = None) -> go.Figure:
    """Per-class distance distributions with the kept band shaded: ``band_figure_spec`` as a
    plotly Figure (arguments and figure as there)."""
    return go.Figure(**band_figure_spec(distances, labels, class_names, mask, real_distances,
                                        real_labels, metric=metric, stats=stats, edges=edges),
                     _validate=False)


def band_figure_spec(distances: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                     mask: np.ndarray, real_distances: np.ndarray | None = None,
                     real_labels: np.ndarray | None = None, *, metric: str = "cosine",
                     stats: tuple[pd.DataFrame, pd.DataFrame | None] | None = None,
                     edges: np.ndarray | None = None) -> dict[str, Any]:
    """Per-class distance distributions with the kept band shaded, as plain dicts.

    One box per class for the synthetic samples (and one beside it for the real images when
    ``real_distances`` / ``real_labels`` are given). The box statistics (whiskers = min and max,
    box = quartiles, dashed line = mean) are computed exactly in numpy, so only a few numbers per
    class reach the browser whatever N is: no point downsampling is needed. A shaded rectangle
    per class spans the distances of its kept synthetic samples (low to high edge).

    Args:
        distances: (N,) synthetic distances; labels: (N,) int; mask: (N,) bool kept;
        class_names: C names; real_distances / real_labels: (M,) optional;
        metric: only used to label the y axis.
        stats: the (synthetic, real) ``box_stats`` of these distances when already computed
            (a band change moves only the shaded band, not the boxes).
        edges: (C, 2) the kept distances' range per class when already computed (the band
            summary's ``low_distance`` / ``high_distance``).

    Returns:
        ``{"data": [trace dicts], "layout": {...}}`` (template "plotly_white", shared: copy
        before changing it), readable at 1280 x 800: ``go.Figure(**spec)``, or sent to the
        browser as it is (``plotly_json``: a plotly Figure deep-copies the template when it is
        built and again when it is serialised, ~15 ms of a band change at 100 classes).
    """
    names = [str(c) for c in class_names]
    num_classes = len(names)
    distances, labels = check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != distances.shape:
        raise InvalidConfigError(f"mask must have shape {distances.shape}, got {mask.shape}")
    syn, real = stats if stats is not None else (box_stats(distances, labels, num_classes), None)
    if stats is None and real_distances is not None and real_labels is not None:
        rd, rl = check_distances(real_distances, real_labels, num_classes)
        real = box_stats(rd, rl, num_classes)
    present = syn["n"].to_numpy() > 0
    if real is not None:
        present |= real["n"].to_numpy() > 0
    shown = np.flatnonzero(present)
    x_names = [names[i] for i in shown]
    position = {int(c): j for j, c in enumerate(shown)}

    # The figure is assembled as plain dicts, never validated: plotly's validation of a
    # 100-class layout (100 shapes, 2 x 100 boxes) cost more than the whole band change.
    traces: list[dict[str, Any]] = []

    def add_box(stats: pd.DataFrame, label: str, color: str) -> None:
        rows = stats.iloc[shown]
        ok = rows["n"].to_numpy() > 0
        col = {k: rows[k].to_numpy(np.float64)[ok].tolist()
               for k in ("min", "q1", "median", "q3", "max", "mean")}
        traces.append(dict(
            type="box", name=label, x=[x for x, o in zip(x_names, ok) if o],
            lowerfence=col["min"], q1=col["q1"], median=col["median"], q3=col["q3"],
            upperfence=col["max"], mean=col["mean"], boxmean=True,
            marker=dict(color=color), offsetgroup=label, boxpoints=False))

    add_box(syn, "synthetic", "#4C72B0")
    if real is not None:
        add_box(real, "real", "#DD8452")

    # kept band: one rectangle per class between its low and high edges
    edges = kept_range(distances, labels, mask, num_classes) if edges is None else edges
    shapes = [dict(type="rect", xref="x", yref="y", x0=position[int(c)] - 0.45,
                   x1=position[int(c)] + 0.45, y0=float(edges[c][0]), y1=float(edges[c][1]),
                   fillcolor="rgba(44, 160, 44, 0.18)", line=dict(width=0), layer="below")
              for c in shown if not np.isnan(edges[c][0])]
    traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name="kept band",
                       marker=dict(symbol="square", size=14, color="rgba(44, 160, 44, 0.35)")))
    kept, total = int(mask.sum()), int(len(mask))
    axis = "cosine distance (1 - cos)" if metric == "cosine" else "euclidean distance"
    layout = dict(
        template=_white_template(), boxmode="group", height=600, shapes=shapes,
        title=dict(text=f"Distance to the class centroid per class: kept band shaded "
                        f"({kept:,} of {total:,} synthetic samples kept)", x=0.01),
        xaxis=dict(title=dict(text="class"), type="category", categoryorder="array",
                   categoryarray=x_names, tickangle=-45 if len(x_names) > 12 else 0),
        yaxis=dict(title=dict(text=f"{axis} to the class centroid")),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        margin=dict(l=70, r=20, t=80, b=90))
    return {"data": traces, "layout": layout}


def plotly_json(spec: dict[str, Any]) -> str:
    """A figure spec (``{"data", "layout"}`` plain dicts) as the JSON ``Figure.to_json``
    writes for the same figure, without building the Figure."""
    from plotly.io.json import to_json_plotly

    return to_json_plotly(spec)


def _white_template() -> dict[str, Any]:
    """The "plotly_white" template as a plain dict (looked up once)."""
    global _WHITE
    if _WHITE is None:
        from plotly.io import templates
        _WHITE = templates["plotly_white"].to_plotly_json()
    return _WHITE


_WHITE: dict[str, Any] | None = None


def map_figure(points: pd.DataFrame, mask: np.ndarray, class_names: Sequence[str], *,
               method: str = "pca") -> go.Figure:
    """Plotly scatter of an ``engine.curation.embedding_map``: colour = class, marker = real
    (circle), kept synthetic (diamond) or dropped synthetic (x, faded).

    Args:
        points: ``embedding_map`` output; mask: (N_syn,) bool kept, indexed by ``index``.

    Returns:
        plotly.graph_objects.Figure (one WebGL trace per class and kind).
    """
    mask = np.asarray(mask, dtype=bool)
    syn = (points["kind"] == "synthetic").to_numpy()
    state = np.where(syn, "dropped", "real").astype(object)
    kept = np.zeros(len(points), dtype=bool)
    kept[syn] = mask[points["index"].to_numpy()[syn]]
    state[kept] = "kept"
    palette = px.colors.qualitative.Dark24
    styles = {"real": dict(symbol="circle", size=5, opacity=0.45),
              "kept": dict(symbol="diamond", size=7, opacity=0.9),
              "dropped": dict(symbol="x", size=6, opacity=0.35)}
    labels = points["label"].to_numpy()
    classes = np.unique(labels)
    traces = []
    if len(classes) <= len(palette):  # one trace per class and kind: a legend per class
        for c in classes:
            for s, style in styles.items():
                sel = (labels == c) & (state == s)
                if not sel.any():
                    continue
                traces.append(go.Scattergl(
                    x=points["x"][sel], y=points["y"][sel], mode="markers",
                    name=f"{class_names[int(c)]} · {s}", legendgroup=str(c),
                    customdata=points["index"][sel],
                    marker=dict(color=palette[int(c) % len(palette)], **style),
                    hovertemplate=f"{class_names[int(c)]} ({s}) #%{{customdata}}<extra></extra>"))
    else:  # many classes: one trace per kind, the class as a colour scale and in the hover
        names = np.asarray([str(class_names[int(c)]) for c in labels], dtype=object)
        for s, style in styles.items():
            sel = state == s
            if not sel.any():
                continue
            traces.append(go.Scattergl(
                x=points["x"][sel], y=points["y"][sel], mode="markers", name=s,
                customdata=np.stack([points["index"][sel].to_numpy(), names[sel]], axis=1),
                marker=dict(color=labels[sel], colorscale="Turbo", **style),
                hovertemplate=f"%{{customdata[1]}} ({s}) #%{{customdata[0]}}<extra></extra>"))
    fig = go.Figure(data=traces)  # all traces at once: add_trace per trace re-validates
    n_syn = int(syn.sum())
    fig.update_layout(
        template="plotly_white", height=520,
        title=dict(text=f"{method.upper()} map: {len(points) - n_syn:,} real, {n_syn:,} synthetic "
                        f"points ({int(kept.sum()):,} kept)", x=0.01),
        xaxis_title=f"{method} 1", yaxis_title=f"{method} 2",
        margin=dict(l=50, r=20, t=60, b=50))
    return fig


def dashboard_figure(table: pd.DataFrame, columns: Sequence[str] = (
        "acceptance", "diversity", "fidelity", "drift", "frechet")) -> go.Figure:
    """Plotly heatmap of the per-class dashboard: one row per metric, one column per class.

    Colours are each metric scaled to [0, 1] over the classes (so weak classes stand out
    whatever the units); the cell text is the value itself.

    Args:
        table: ``engine.curation.class_dashboard`` (or ``evaluate``'s "per_class"): a "class"
            column and one column per metric; columns absent or all NaN are left out.
    """
    cols = [c for c in columns if c in table.columns and table[c].notna().any()]
    values = table[cols].to_numpy(dtype=np.float64).T  # (metrics, C)
    lo = np.nanmin(values, axis=1, keepdims=True)
    span = np.nanmax(values, axis=1, keepdims=True) - lo
    scaled = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1.0), 0.5)
    text = [[("" if np.isnan(v) else f"{v:.3g}") for v in row] for row in values]
    fig = go.Figure(go.Heatmap(z=scaled, x=table["class"].astype(str).tolist(), y=cols,
                               text=text, texttemplate="%{text}", colorscale="Viridis",
                               showscale=False, hovertemplate="%{y} · %{x}: %{text}"
                                                              "<extra></extra>"))
    fig.update_layout(template="plotly_white", height=120 + 45 * len(cols),
                      title=dict(text="Per-class dashboard (colour: scaled per metric)", x=0.01),
                      margin=dict(l=90, r=20, t=50, b=60))
    fig.update_xaxes(type="category")
    return fig


def experiment_figure(t: pd.DataFrame, record: dict[str, Any]) -> go.Figure:
    """A plotly figure of an experiment: lines over the synthetic size (scaling) or bars,
    top-1 mean with the std over seeds as error bars.

    Args:
        t: ``engine.experiments.table(project, record)``: one row per training data, with
            series, size (x real), top-1 mean and top-1 std.
        record: the experiment (``engine.experiments.get``): its kind and name.
    """
    fig = go.Figure()
    if record["kind"] == "scaling":
        real = t[t["series"] == "real"]
        for series in [s for s in dict.fromkeys(t["series"]) if s != "real"]:
            r = t[t["series"] == series]
            fig.add_trace(go.Scatter(
                x=r["size (x real)"], y=r["top-1 mean"], name=f"{series} (synthetic only)",
                mode="lines+markers",
                error_y=dict(type="data", array=r["top-1 std"].fillna(0.0).tolist())))
        if len(real) and not math.isnan(real["top-1 mean"].iloc[0]):
            mean, std = real["top-1 mean"].iloc[0], real["top-1 std"].iloc[0]
            fig.add_hline(y=mean, line_dash="dash", line_color="#DD8452",
                          annotation_text=f"real only {mean:.1f}"
                          + (f" ± {std:.1f}" if not math.isnan(std) else ""),
                          annotation_position="bottom right")
        sizes = sorted({float(v) for v in t.loc[t["series"] != "real", "size (x real)"]})
        fig.update_xaxes(title="synthetic images (x the real training set)", tickvals=sizes,
                         ticktext=[f"{v:g}x" for v in sizes])
    else:
        colors = {"real": "#DD8452", "classical": "#8172B3", "synthetic": "#55A868",
                  "unfiltered": "#4C72B0", "filtered": "#55A868"}
        fig.add_trace(go.Bar(
            x=t["training data"], y=t["top-1 mean"],
            marker_color=[colors.get(s, "#4C72B0") for s in t["series"]],
            error_y=dict(type="data", array=t["top-1 std"].fillna(0.0).tolist()),
            text=[f"{v:.1f}" if not math.isnan(v) else "" for v in t["top-1 mean"]],
            textposition="outside", showlegend=False))
    # honest axes: from 0 (a zoom on the results exaggerates their differences)
    fig.update_layout(template="plotly_white", height=360,
                      title=dict(text=f"{record['name']}: {EXPERIMENT_TITLES[record['kind']]}", x=0.01),
                      yaxis=dict(title="top-1 % (mean ± std over seeds)", range=ACCURACY_RANGE),
                      margin=dict(l=60, r=20, t=50, b=60))
    return fig


def loss_figure(points: list[tuple[float, float]], title: str) -> go.Figure:
    """A model's training loss: ``points`` are (step, loss) pairs."""
    fig = go.Figure()
    if points:
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                 mode="lines+markers" if len(points) < 40 else "lines",
                                 line=dict(color="#4C72B0", width=2), name="loss"))
    fig.update_layout(template="plotly_white", height=300, title=dict(text=title, x=0.01),
                      xaxis_title="step", yaxis_title="training loss (MSE)",
                      margin=dict(l=60, r=20, t=50, b=50), showlegend=False)
    return fig


def recipe_figure(candidates: pd.DataFrame, name: str = "recipe search") -> go.Figure:
    """Successive halving at a glance: each candidate's validation top-1 over the epochs of
    the rungs it reached (grey: stopped early, green: the winner; excluded candidates are
    left out).

    Args:
        candidates: ``engine.recipe.table(state)``: one row per candidate, with label,
            ``val top-1 @<e>ep`` columns, excluded and winner.
    """
    rungs = [c for c in candidates.columns if c.startswith("val top-1 @")]
    epochs = [int(c[len("val top-1 @"):-2]) for c in rungs]
    fig = go.Figure()
    for r in candidates.to_dict("records"):
        points = [(e, float(r[c])) for e, c in zip(epochs, rungs) if not math.isnan(r[c])]
        if not points or r["excluded"]:
            continue
        winner = bool(r["winner"])
        fig.add_trace(go.Scatter(
            x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
            name=r["label"], showlegend=winner,
            line=dict(color="#55A868" if winner else "#B0B0B0", width=3 if winner else 1),
            hovertemplate=f"{r['label']}<br>%{{x}} epochs: %{{y:.2f}} %<extra></extra>"))
    fig.update_xaxes(title="epochs (rungs)", tickvals=epochs, type="log")
    fig.update_yaxes(title="top-1 % (validation)", range=ACCURACY_RANGE)
    fig.update_layout(template="plotly_white", height=360,
                      title=dict(text=f"{name}: successive halving on validation", x=0.01),
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def per_class_figure(per_class: pd.DataFrame, split: str, title: str) -> go.Figure:
    """An evaluation's accuracy per class as bars on a 0-100 % axis.

    Args:
        per_class: ``engine.project.reads.EvaluationReport.per_class``: class, accuracy (%,
            NaN for a class without an image in the split), images.
        split: the scored split ("test" / "val"), named on the axis.
    """
    acc = per_class["accuracy"].astype(float)
    images = per_class["images"].tolist()
    fig = go.Figure(go.Bar(
        x=per_class["class"].astype(str).tolist(), y=acc.fillna(0.0).tolist(),
        marker_color="#4C72B0", text=["" if v != v else f"{v:.0f}" for v in acc],
        textposition="outside", cliponaxis=False, customdata=images,
        hovertemplate="%{x}: %{y:.1f} % of %{customdata} images<extra></extra>"))
    mean = float(acc.mean()) if acc.notna().any() else float("nan")
    if mean == mean:  # a dotted line, its value in the title (a label would cover bars)
        fig.add_hline(y=mean, line_dash="dot", line_color="#DD8452")
        title += f" · dotted: mean of classes {mean:.1f} %"
    fig.update_layout(template="plotly_white", height=340, title=dict(text=title, x=0.01),
                      yaxis=dict(title=f"accuracy % ({split} split)", range=ACCURACY_RANGE),
                      xaxis=dict(title="class", type="category"),
                      margin=dict(l=60, r=20, t=50, b=60), showlegend=False)
    if len(per_class) > 12:
        fig.update_xaxes(tickangle=-45)
    return fig


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], split: str,
                     title: str) -> go.Figure:
    """A confusion matrix as a heatmap: row = true class, column = predicted; the colour is
    the share of the true class's images (0-1), the cell text the count (up to 20 classes).
    Beyond ``CONFUSION_CELLS_MAX`` classes the figure only says so (the page shows the top
    confusions as a table).

    Args:
        confusion: (C, C) counts; classes: C names; split: the scored split.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    names = [str(c) for c in classes]
    fig = go.Figure()
    if len(cm) > CONFUSION_CELLS_MAX:
        fig.update_layout(template="plotly_white", height=120, title=dict(
            text=f"{title}: {len(cm)} classes, too many for a heatmap (see the top "
                 f"confusions)", x=0.01))
        return fig
    totals = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    fig.add_trace(go.Heatmap(
        z=share, x=names, y=names, zmin=0.0, zmax=1.0, colorscale="Blues",
        text=cm.astype(int), texttemplate="%{text}" if len(cm) <= 20 else None,
        colorbar=dict(title="share", thickness=12),
        hovertemplate="true %{y}, predicted %{x}: %{text} images (%{z:.0%})<extra></extra>"))
    side = max(320, min(720, 150 + 34 * len(cm)))
    fig.update_layout(template="plotly_white", height=side, title=dict(text=title, x=0.01),
                      margin=dict(l=70, r=20, t=50, b=60))
    fig.update_xaxes(title=f"predicted class ({split} split)", type="category", side="bottom")
    fig.update_yaxes(title="true class", type="category", autorange="reversed")
    return fig


def curves_figure(runs: dict[str, pd.DataFrame], title: str) -> go.Figure:
    """Evaluations' per-epoch curves, overlaid: loss on the left (training solid, held-out
    dotted), held-out top-1 on the right (0-100 %). One colour per run; the legend names each
    run once (click it to hide the run).

    Args:
        runs: legend name (say which split: "real-2 (test)") -> curves with columns
            ``epoch, train_loss, test_loss, test_top1`` (``EvaluationReport.curves``).
    """
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("loss (solid: training, dotted: held-out)",
                                        "held-out top-1 %"))
    for i, (name, c) in enumerate(runs.items()):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        mode = "lines+markers" if len(c) < 40 else "lines"
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["train_loss"], name=name, legendgroup=name,
                                 mode=mode, line=dict(color=color),
                                 hovertemplate=f"{name}<br>epoch %{{x}}: training loss "
                                               f"%{{y:.4f}}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["test_loss"], name=name, legendgroup=name,
                                 mode=mode, line=dict(color=color, dash="dot"), showlegend=False,
                                 hovertemplate=f"{name}<br>epoch %{{x}}: held-out loss "
                                               f"%{{y:.4f}}<extra></extra>"), row=1, col=1)
        fig.add_trace(go.Scatter(x=c["epoch"], y=c["test_top1"], name=name, legendgroup=name,
                                 mode=mode, line=dict(color=color), showlegend=False,
                                 hovertemplate=f"{name}<br>epoch %{{x}}: top-1 %{{y:.2f}} %"
                                               f"<extra></extra>"), row=1, col=2)
    last = max((float(c["epoch"].max()) for c in runs.values() if len(c)), default=1.0)
    fig.update_xaxes(title="epoch", dtick=max(1, math.ceil(last / 10)))  # whole epochs
    fig.update_yaxes(title="cross-entropy", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title="top-1 %", range=ACCURACY_RANGE, row=1, col=2)
    fig.update_layout(template="plotly_white", height=360, title=dict(text=title, x=0.01),
                      margin=dict(l=60, r=20, t=80, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.1, xanchor="right",
                                  x=1.0))
    return fig


def losses_figure(runs: dict[str, list[tuple[float, float]]], title: str) -> go.Figure:
    """Models' training losses overlaid: ``runs`` maps a model's name to its (step, loss)
    points; one colour per model, named in the legend."""
    fig = go.Figure()
    for i, (name, points) in enumerate(runs.items()):
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                 name=name, mode="lines+markers" if len(points) < 40 else "lines",
                                 line=dict(color=RUN_COLORS[i % len(RUN_COLORS)], width=2)))
    fig.update_layout(template="plotly_white", height=320, title=dict(text=title, x=0.01),
                      xaxis_title="step", yaxis=dict(title="training loss (MSE)",
                                                     rangemode="tozero"),
                      margin=dict(l=60, r=20, t=50, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right",
                                  x=1.0))
    return fig


def config_styled(table: pd.DataFrame) -> Any:
    """A config table (``engine.project.reads.config_table``) with the rows whose values
    differ shaded: a pandas Styler, which ``gr.Dataframe`` draws as it is."""
    if "differs" not in table.columns or not len(table):
        return table
    return table.style.apply(
        lambda row: ["background-color: #fff3c4" if row["differs"] else ""] * len(row), axis=1)
