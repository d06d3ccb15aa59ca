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
