"""The studio's plotly figures, drawn from real engine results on constructed data."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import BandConfig
from engine.curation import (
    band_mask,
    centroid_distances,
    class_centroids,
    embedding_map,
    evaluate,
)
from studio.figures import band_figure, dashboard_figure, map_figure


def _random(n=600, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    emb = (rng.normal(size=(n, d)) + labels[:, None] * 0.5).astype(np.float32)
    return emb, labels


def test_band_figure_has_boxes_and_band_shapes():
    emb, labels = _random(n=400)
    cents = class_centroids(emb, labels, 5)
    d = centroid_distances(emb, labels, cents)
    mask = band_mask(d, labels, BandConfig(), 5)
    fig = band_figure(d, labels, list("abcde"), mask, real_distances=d[:50],
                      real_labels=labels[:50])
    assert len(fig.layout.shapes) == 5
    boxes = [t for t in fig.data if t.type == "box"]
    assert [t.name for t in boxes] == ["synthetic", "real"]
    # the box statistics are exact
    c0 = np.sort(d[labels == 0])
    assert boxes[0].median[0] == pytest.approx(float(np.median(c0)), rel=1e-6)
    assert boxes[0].q1[0] == pytest.approx(float(np.quantile(c0, 0.25)), rel=1e-6)
    shape = fig.layout.shapes[0]
    assert shape.y0 == pytest.approx(float(d[(labels == 0) & mask].min()))
    assert fig.layout.template.layout.paper_bgcolor is not None  # plotly_white applied
    assert "kept band" in fig.layout.title.text
    assert fig.layout.yaxis.title.text


def test_map_figure_marks_real_kept_and_dropped():
    emb, labels = _random(n=600, d=12, c=5)
    real, rl = emb[:200], labels[:200]
    syn, sl = emb[200:], labels[200:]
    pts = embedding_map(real, rl, syn, sl, max_points=150, seed=0)
    mask = np.zeros(len(syn), bool)
    mask[::2] = True
    fig = map_figure(pts, mask, [f"c{i}" for i in range(5)])
    names = {t.name.split(" · ")[1] for t in fig.data}
    assert names == {"real", "kept", "dropped"}
    kept_pts = sum(len(t.x) for t in fig.data if t.name.endswith("kept"))
    assert kept_pts == int(mask[pts.loc[pts.kind == "synthetic", "index"]].sum())


def test_dashboard_figure():
    rng = np.random.default_rng(0)
    real_labels = np.repeat([0, 1], 60)
    real = (rng.normal(size=(120, 6)) + real_labels[:, None] * 3).astype(np.float32)
    fake_labels = np.repeat([0, 1], 40)
    fake = (rng.normal(size=(80, 6)) * np.where(fake_labels == 1, 0.1, 1.0)[:, None]
            + fake_labels[:, None] * 3).astype(np.float32)
    mask = np.ones(80, bool)
    mask[:10] = False
    fid = np.linspace(0, 1, 80)
    out = evaluate(real, real_labels, fake, fake_labels, mask, ["a", "b"], fidelity=fid,
                   metric="euclidean", k=3)
    fig = dashboard_figure(out["per_class"])
    assert fig.data[0].type == "heatmap" and "acceptance" in fig.data[0].y


def test_accuracy_axes_start_at_zero_and_big_confusions_stay_a_table():
    """Honest axes: every accuracy chart spans 0-100 % (a zoom on 95-100 % exaggerates
    differences); a confusion matrix of many classes is left to the top-confusions table."""
    import pandas as pd

    from studio.figures import (
        confusion_figure,
        curves_figure,
        experiment_figure,
        per_class_figure,
        recipe_figure,
    )

    t = pd.DataFrame({"training data": ["real", "real + 2x"], "series": ["real", "synthetic"],
                      "size (x real)": [0.0, 2.0], "top-1 mean": [97.5, 98.4],
                      "top-1 std": [0.3, float("nan")]})
    fig = experiment_figure(t, {"kind": "augmentation", "name": "aug"})
    assert fig.layout.yaxis.range[0] == 0 and fig.layout.yaxis.range[1] >= 100
    cands = pd.DataFrame({"label": ["a", "b"], "val top-1 @2ep": [96.0, 97.0],
                          "excluded": ["", ""], "winner": [False, True]})
    assert recipe_figure(cands).layout.yaxis.range[0] == 0
    per_class = pd.DataFrame({"class": ["a", "b"], "accuracy": [99.0, float("nan")],
                              "images": [4, 0]})
    fig = per_class_figure(per_class, "test", "t")
    assert fig.layout.yaxis.range[0] == 0 and list(fig.data[0].text) == ["99", ""]
    curves = pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "test_loss": [1.1, 0.7],
                           "test_top1": [90.0, 95.0]})
    fig = curves_figure({"r1 (test)": curves, "r2 (test)": curves}, "t")
    assert [t.name for t in fig.data if t.showlegend is not False] == ["r1 (test)", "r2 (test)"]
    assert len(fig.data) == 6 and fig.layout.yaxis2.range[0] == 0
    small = confusion_figure(np.eye(3, dtype=int) * 2, ["a", "b", "c"], "test", "t")
    assert small.data[0].type == "heatmap" and small.data[0].zmax == 1.0
    many = confusion_figure(np.eye(60, dtype=int), [str(i) for i in range(60)], "test", "t")
    assert len(many.data) == 0 and "top confusions" in many.layout.title.text
