"""A 2-D map of the representation space: real and generated samples, PCA or t-SNE."""

from __future__ import annotations

import numpy as np
import pandas as pd

from engine.curation.arrays import check_emb, normalise
from engine.curation.generative_metrics import subsample
from engine.errors import InvalidConfigError

MAP_METHODS = ("pca", "tsne")


def embedding_map(real: np.ndarray, real_labels: np.ndarray, syn: np.ndarray,
                  syn_labels: np.ndarray, *, method: str = "pca", max_points: int = 5_000,
                  seed: int = 0) -> pd.DataFrame:
    """2-D coordinates of a stratified, seeded subsample of real + synthetic representations.

    At most ``max_points`` rows in all, shared between real and synthetic in proportion to
    their sizes and, inside each, between classes in proportion
    (``generative_metrics.subsample``), so the map costs the same at 5,000 or 500,000 samples.
    Only the picked rows are read from the (memory-mapped) arrays. "pca": the first two
    principal components of the picked rows (L2-normalised first); "tsne": scikit-learn's
    t-SNE of them (slower: seconds per 1,000).
    The coordinates do not depend on the band: compute once per (generation, encoding), then
    colour by any mask (the studio's ``figures.map_figure``).

    Returns:
        DataFrame with x, y, kind ("real" / "synthetic"), label, index (row in its own array).
    """
    if method not in MAP_METHODS:
        raise InvalidConfigError(f"method must be one of {MAP_METHODS}, got {method!r}")
    if max_points < 2:
        raise InvalidConfigError(f"max_points must be >= 2, got {max_points}")
    check_emb(real, "real")
    check_emb(syn, "syn")
    n_real, n_syn = len(real), len(syn)
    total = n_real + n_syn
    take_real = min(n_real, int(round(max_points * n_real / max(total, 1))))
    take_syn = min(n_syn, max_points - take_real)
    ri = subsample(n_real, take_real, seed, real_labels)
    si = subsample(n_syn, take_syn, seed + 1, syn_labels)
    x = np.concatenate([np.asarray(real[ri], dtype=np.float32),
                        np.asarray(syn[si], dtype=np.float32)])  # (P, D), P <= max_points
    x = normalise(x)
    if method == "pca":
        centred = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred @ vt[:1].T,
                                                                np.zeros(len(x))]
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed,
                  perplexity=float(min(30, max(2, (len(x) - 1) // 3)))).fit_transform(x)
    return pd.DataFrame({
        "x": xy[:, 0].astype(np.float32), "y": xy[:, 1].astype(np.float32),
        "kind": ["real"] * len(ri) + ["synthetic"] * len(si),
        "label": np.concatenate([np.asarray(real_labels)[ri], np.asarray(syn_labels)[si]]
                                ).astype(np.int64),
        "index": np.concatenate([ri, si]).astype(np.int64)})
