"""Curation in the representation space: which generated samples to keep, and how good they are.

The paper's recipe: re-encode the generated images with the conditioning encoder, compute one
centroid per class, measure each sample's distance to its class centroid, drop the nearest and
the farthest samples of every class and keep the middle band.

- ``bands``: class centroids, distances to them, within-class ranks, the kept band (quantile or
  distance, per-class overrides, outlier rules, a target count), its summary and edges.
- ``generative_metrics``: exact k-NN (faiss), precision / recall / density / coverage,
  memorisation and near-duplicates, Fréchet distance (overall and per class), conditioning
  fidelity, the per-class dashboard.
- ``maps``: the 2-D map (PCA or t-SNE) of a stratified subsample of real + generated samples.
- ``sets``: union, intersection and difference of selections.
- ``hand``: samples kept or dropped by hand, replayed in order and applied on top of a band.
- ``knn``: k nearest neighbours through a faiss index (exact up to 100,000 vectors,
  IVF above), saved and loaded atomically; the NumPy brute force it is checked against.
- ``arrays``: the input checks and helpers the modules above share.

Everything is numpy on (memory-mapped) arrays; nothing here touches the project file or draws a
figure (the studio's ``studio.figures`` draws what these functions compute).
"""

from engine.curation.bands import (
    band_edges,
    band_mask,
    band_summary,
    band_thresholds,
    box_stats,
    centroid_distances,
    class_centroids,
    class_limits,
    class_means,
    class_ranks,
    edge_samples,
    kept_range,
    outlier_thresholds,
    robust_stats,
)
from engine.curation.generative_metrics import (
    class_dashboard,
    conditioning_fidelity,
    copy_threshold,
    evaluate,
    frechet_distance,
    frechet_per_class,
    knn_radii,
    memorisation,
    near_duplicates,
    nearest,
    prdc,
    subsample,
)
from engine.curation.hand import DECISIONS, apply_hand, hand_counts, hand_state
from engine.curation.maps import MAP_METHODS, embedding_map
from engine.curation.sets import COMBINE_OPS, combine

__all__ = [
    "COMBINE_OPS",
    "DECISIONS",
    "apply_hand",
    "hand_counts",
    "hand_state",
    "MAP_METHODS",
    "band_edges",
    "band_mask",
    "band_summary",
    "band_thresholds",
    "box_stats",
    "centroid_distances",
    "class_centroids",
    "class_dashboard",
    "class_limits",
    "class_means",
    "class_ranks",
    "combine",
    "conditioning_fidelity",
    "copy_threshold",
    "edge_samples",
    "embedding_map",
    "evaluate",
    "frechet_distance",
    "frechet_per_class",
    "kept_range",
    "knn_radii",
    "memorisation",
    "near_duplicates",
    "nearest",
    "outlier_thresholds",
    "prdc",
    "robust_stats",
    "subsample",
]
