"""The 2-D embedding map: stratified, seeded, PCA and t-SNE."""

from __future__ import annotations

import numpy as np
import pytest

from engine.curation.maps import embedding_map


def _random(n=600, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    emb = (rng.normal(size=(n, d)) + labels[:, None] * 0.5).astype(np.float32)
    return emb, labels


def test_embedding_map_stratified():
    emb, labels = _random(n=600, d=12, c=5)
    real, rl = emb[:200], labels[:200]
    syn, sl = emb[200:], labels[200:]
    pts = embedding_map(real, rl, syn, sl, max_points=150, seed=0)
    assert len(pts) <= 150 and (pts["kind"] == "real").sum() == pytest.approx(50, abs=3)
    pd_counts = np.bincount(pts.loc[pts.kind == "synthetic", "label"], minlength=5)
    np.testing.assert_allclose(pd_counts / pd_counts.sum(), np.bincount(sl) / len(sl),
                               atol=0.03)
    again = embedding_map(real, rl, syn, sl, max_points=150, seed=0)
    np.testing.assert_allclose(pts[["x", "y"]], again[["x", "y"]])
    tsne = embedding_map(real, rl, syn, sl, method="tsne", max_points=60, seed=0)
    assert len(tsne) <= 60 and np.isfinite(tsne[["x", "y"]].to_numpy()).all()
