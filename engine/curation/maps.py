"""A 2-D map of the representation space: real and generated samples, PCA, t-SNE or UMAP.

``embedding_map`` picks a stratified, seeded subsample and lays it out; ``layout_2d`` is the
layout alone. The studio's interactive map draws up to 200,000 points (``engine.stages.map_stage``
computes them once per encoding, in a job); t-SNE is refused above ``TSNE_MAX_POINTS`` (it
costs seconds per 1,000 points). UMAP needs the optional ``umap-learn`` package
(``pip install 'rcdm-studio[map]'``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.config import MAP_METHODS
from engine.curation.arrays import check_emb, normalise
from engine.curation.generative_metrics import subsample
from engine.errors import InvalidConfigError

TSNE_MAX_POINTS = 30_000  # scikit-learn t-SNE (Barnes-Hut) past this: many minutes
UMAP_HINT = "pip install 'rcdm-studio[map]' (or: pip install umap-learn)"


def layout_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(P, 2) float32 layout of the rows of ``x`` (P, D), L2-normalised first.

    "pca": the first two principal components (deterministic up to sign; the sign is fixed so
    that each axis' largest loading is positive); "tsne": scikit-learn's t-SNE, seeded;
    "umap": umap-learn's UMAP, seeded (``random_state``: one thread, reproducible).

    Raises:
        InvalidConfigError: an unknown method, t-SNE above ``TSNE_MAX_POINTS``, UMAP without
            umap-learn installed.
    """
    if method not in MAP_METHODS:
        raise InvalidConfigError(f"method must be one of {MAP_METHODS}, got {method!r}")
    x = normalise(np.asarray(x, dtype=np.float32))
    if len(x) < 3:  # nothing to project: the points on a line
        return np.c_[np.arange(len(x), dtype=np.float32), np.zeros(len(x), np.float32)]
    if method == "pca":
        centred = x - x.mean(axis=0)
        # the covariance's eigenvectors (D x D): cheaper than an SVD of 200,000 rows
        cov = centred.T.astype(np.float64) @ centred / max(len(x) - 1, 1)
        w, v = np.linalg.eigh(cov)
        top = v[:, np.argsort(w)[::-1][:2]]  # (D, <=2)
        top = top * np.sign(top[np.abs(top).argmax(axis=0), np.arange(top.shape[1])])
        xy = centred @ top.astype(np.float32)
        if xy.shape[1] < 2:
            xy = np.c_[xy, np.zeros(len(x), np.float32)]
    elif method == "tsne":
        if len(x) > TSNE_MAX_POINTS:
            raise InvalidConfigError(
                f"t-SNE takes at most {TSNE_MAX_POINTS:,} points, got {len(x):,}: lower "
                f"max_points or use pca / umap")
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=float(min(30, max(2, (len(x) - 1) // 3)))).fit_transform(x)
    else:
        try:
            import umap
        except ImportError:
            raise InvalidConfigError(f"UMAP needs the umap-learn package: {UMAP_HINT}") \
                from None
        xy = umap.UMAP(n_components=2, random_state=seed, n_jobs=1,
                       n_neighbors=int(min(15, max(2, len(x) - 1)))).fit_transform(x)
    return np.asarray(xy, dtype=np.float32)


def stratified_rows(n_real: int, real_labels: np.ndarray, n_syn: int, syn_labels: np.ndarray,
                    max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(real rows, synthetic rows) picked for a map of at most ``max_points`` points: shared
    between real and synthetic in proportion to their sizes, inside each between classes in
    proportion (``generative_metrics.subsample``); sorted, seeded."""
    if max_points < 2:
        raise InvalidConfigError(f"max_points must be >= 2, got {max_points}")
    total = n_real + n_syn
    take_real = min(n_real, int(round(max_points * n_real / max(total, 1))))
    take_syn = min(n_syn, max_points - take_real)
    return (subsample(n_real, take_real, seed, real_labels),
            subsample(n_syn, take_syn, seed + 1, syn_labels))


def embedding_map(real: np.ndarray, real_labels: np.ndarray, syn: np.ndarray,
                  syn_labels: np.ndarray, *, method: str = "pca", max_points: int = 5_000,
                  seed: int = 0) -> pd.DataFrame:
    """2-D coordinates of a stratified, seeded subsample of real + synthetic representations.

    At most ``max_points`` rows in all, shared between real and synthetic in proportion to
    their sizes and, inside each, between classes in proportion
    (``generative_metrics.subsample``), so the map costs the same at 5,000 or 500,000 samples.
    Only the picked rows are read from the (memory-mapped) arrays. "pca": the first two
    principal components of the picked rows (L2-normalised first); "tsne": scikit-learn's
    t-SNE of them (slower: seconds per 1,000); "umap": UMAP (``layout_2d``).
    The coordinates do not depend on the band: compute once per (generation, encoding), then
    colour by any mask (the studio's ``figures.map_figure``).

    Returns:
        DataFrame with x, y, kind ("real" / "synthetic"), label, index (row in its own array).
    """
    if method not in MAP_METHODS:
        raise InvalidConfigError(f"method must be one of {MAP_METHODS}, got {method!r}")
    check_emb(real, "real")
    check_emb(syn, "syn")
    ri, si = stratified_rows(len(real), real_labels, len(syn), syn_labels, max_points, seed)
    x = np.concatenate([np.asarray(real[ri], dtype=np.float32),
                        np.asarray(syn[si], dtype=np.float32)])  # (P, D), P <= max_points
    xy = layout_2d(x, method, seed)
    return pd.DataFrame({
        "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
        "kind": ["real"] * len(ri) + ["synthetic"] * len(si),
        "label": np.concatenate([np.asarray(real_labels)[ri], np.asarray(syn_labels)[si]]
                                ).astype(np.int64),
        "index": np.concatenate([ri, si]).astype(np.int64)})
