"""Bands in the representation space: class centroids, distances to them, the kept band.

The paper's recipe: re-encode the generated images with the conditioning encoder, compute one
centroid per class, measure each sample's distance to its class centroid, drop the nearest and
the farthest samples of every class and keep the middle band.

Everything here is vectorised numpy and scales to the paper's 4x ImageNet-100 (about 520,000
samples x 768 dims float32, memory-mapped): embeddings are read in contiguous chunks of
``chunk_size`` rows, so memory stays bounded by ``chunk_size x D`` whatever N is, and per-class
work is done with sorts, ``bincount`` and sparse one-hot products, never with a Python loop
over samples.

The band rule (``band_mask``), precisely: within a class of ``n`` samples sorted by distance
ascending (ties broken by sample index), the sample of rank ``r`` (0-based) has the midpoint
quantile ``q = (r + 0.5) / n`` and is kept when ``low < q <= high``. Equivalently it is kept when
``start <= r < stop`` with ``start = floor(low * n + 0.5)`` and ``stop = floor(high * n + 0.5)``
(round half up). Consequences, each pinned by a test:

- ``low = 0`` keeps the nearest sample, ``high = 1`` keeps the farthest; ("all") keeps all.
- the paper's "middle" preset (0.25, 0.75) keeps exactly ``n / 2`` of every class with ``n``
  even (2x -> 1x); e.g. ``n = 10`` keeps ranks 3..7 (drops 3 nearest, 2 farthest).
- adjacent bands ``[a, b]`` and ``[b, c]`` partition a class exactly: no sample is in both,
  none falls between.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse

from engine.config import BandConfig
from engine.curation.arrays import (
    DEFAULT_CHUNK,
    EPS,
    check_distances,
    check_emb,
    check_labels,
    check_metric,
    normalise,
    num_classes_of,
)
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

_ROUND_TOL = 1e-9  # absorbs float error in low * n (e.g. 0.35 * 20 = 6.999999999999999)


class _Reporter:
    """Throttles progress reports to at most ~10 per second (and always reports the last)."""

    def __init__(self, progress: ProgressFn, stage: str, total: int) -> None:
        self.progress, self.stage, self.total, self._last = progress, stage, total, 0.0

    def __call__(self, step: int, **metrics: float) -> None:
        now = time.monotonic()
        if step >= self.total or now - self._last >= 0.1:
            self._last = now
            self.progress(ProgressEvent(stage=self.stage, step=step, total=self.total,
                                        metrics=dict(metrics)))


# ----------------------------------------------------------------------------------------------
# centroids and distances


def class_centroids(emb: np.ndarray, labels: np.ndarray, num_classes: int, metric: str = "cosine",
                    *, chunk_size: int = DEFAULT_CHUNK, progress: ProgressFn = no_progress,
                    cancel: CancelToken | None = None) -> np.ndarray:
    """Mean embedding of each class.

    Args:
        emb: (N, D) float array, may be an ``np.memmap``; read in chunks of ``chunk_size`` rows.
        labels: (N,) int class index in ``[0, num_classes)``.
        num_classes: C.
        metric: "euclidean": plain mean; "cosine": mean of the L2-normalised rows, re-normalised
            to unit length (a class whose normalised rows cancel out gets a zero centroid).

    Returns:
        (C, D) float32; a class with no member has a NaN row.
    """
    check_metric(metric)
    check_emb(emb)
    n, d = emb.shape
    labels = check_labels(labels, n, num_classes)
    sums = np.zeros((num_classes, d), dtype=np.float64)
    counts = np.bincount(labels, minlength=num_classes)
    total = max(1, -(-n // chunk_size))
    report = _Reporter(progress, "centroids", total)
    for step, start in enumerate(range(0, n, chunk_size), start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        # 1. read one contiguous chunk: (b, D)
        x = np.asarray(emb[start:start + chunk_size], dtype=np.float32)
        lab = labels[start:start + chunk_size]
        # 2. sum the rows of each class: sparse one-hot (C, b) @ (b, D) -> (C, D), float32
        #    inside a chunk, accumulated in float64 across chunks. For cosine the one-hot
        #    carries 1/||x|| so the rows are normalised inside the product, without a copy.
        if metric == "cosine":
            weight = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), EPS)
        else:
            weight = np.ones(len(lab), dtype=np.float32)
        onehot = scipy.sparse.csr_matrix(
            (weight.astype(np.float32), (lab, np.arange(len(lab)))),
            shape=(num_classes, len(lab)))
        sums += onehot @ x
        report(step)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = sums / counts[:, None]  # empty class -> 0 / 0 = NaN row
    if metric == "cosine":
        norm = np.linalg.norm(centroids, axis=1, keepdims=True)
        centroids = np.where(np.isnan(norm), np.nan, centroids / np.maximum(norm, EPS))
    return centroids.astype(np.float32)


def centroid_distances(emb: np.ndarray, labels: np.ndarray, centroids: np.ndarray,
                       metric: str = "cosine", *, chunk_size: int = DEFAULT_CHUNK,
                       progress: ProgressFn = no_progress,
                       cancel: CancelToken | None = None) -> np.ndarray:
    """Distance of each sample to the centroid of its class.

    Args:
        emb: (N, D) float array (memmap allowed), read in chunks of ``chunk_size`` rows.
        labels: (N,) int class index into ``centroids``.
        centroids: (C, D) float, e.g. from ``class_centroids``; NaN rows give NaN distances.
        metric: "cosine": ``1 - cos(x, c)`` in [0, 2] (zero vectors count as cos = 0);
            "euclidean": ``||x - c||_2``.

    Returns:
        (N,) float32.
    """
    check_metric(metric)
    check_emb(emb)
    check_emb(centroids, "centroids")
    n, d = emb.shape
    if centroids.shape[1] != d:
        raise InvalidConfigError(
            f"centroids have dimension {centroids.shape[1]} but embeddings have {d}")
    labels = check_labels(labels, n, centroids.shape[0])
    cents = np.asarray(centroids, dtype=np.float32)
    if metric == "cosine":
        cents = normalise(cents)  # NaN rows stay NaN
    out = np.empty(n, dtype=np.float32)
    total = max(1, -(-n // chunk_size))
    report = _Reporter(progress, "distances", total)
    for step, start in enumerate(range(0, n, chunk_size), start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        x = np.asarray(emb[start:start + chunk_size], dtype=np.float32)  # (b, D)
        c = cents[labels[start:start + chunk_size]]  # (b, D)
        if metric == "cosine":
            norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), EPS)
            out[start:start + len(x)] = 1.0 - np.einsum("ij,ij->i", x, c) / norm
        else:
            out[start:start + len(x)] = np.linalg.norm(x - c, axis=1)
        report(step)
    return out


# ----------------------------------------------------------------------------------------------
# bands


def _class_ranks(distances: np.ndarray, labels: np.ndarray, num_classes: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rank of every sample inside its class by distance ascending (ties: lower index first).

    Returns:
        rank: (N,) int64 0-based rank within the class.
        counts: (C,) int64 class sizes.
        order: (N,) int64 permutation sorting by (label, distance, index).
        offsets: (C,) int64 position of each class's first sample in ``order``.
    """
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    order = np.lexsort((distances, labels))  # lexsort is stable: ties keep index order
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels), dtype=np.int64) - offsets[labels[order]]
    return rank, counts, order, offsets


def class_ranks(distances: np.ndarray, labels: np.ndarray, num_classes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Within-class ranks by distance, computed once and passed to ``band_mask`` /
    ``band_summary`` as ``ranks=`` so that moving a band does not sort again.

    Returns ``(rank, counts, order, offsets)`` as ``_class_ranks``.
    """
    distances, labels = check_distances(distances, labels, num_classes)
    return _class_ranks(distances, labels, num_classes)


def class_limits(band: BandConfig, num_classes: int,
                 class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class ``(low, high)`` of a band: ``band.low``/``band.high`` with the ``per_class``
    overrides applied.

    Args:
        class_names: C names (index = label); needed when ``band.per_class`` is set.

    Returns:
        low, high: (C,) float64 (quantiles or distances, as ``band.mode`` says).
    """
    low = np.full(num_classes, float(band.low))
    high = np.full(num_classes, float(band.high))
    if band.per_class:
        if class_names is None:
            raise InvalidConfigError("per-class bands need the class names")
        index = {str(c): i for i, c in enumerate(class_names)}
        for name, lo, hi in band.per_class:
            if name not in index:
                raise InvalidConfigError(
                    f"per-class band names an unknown class {name!r}; classes: "
                    f"{list(index)[:20]}")
            low[index[name]], high[index[name]] = lo, hi
    return low, high


def band_edges(counts: np.ndarray, band: BandConfig,
               class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Kept ranks ``[start, stop)`` per class for a quantile band (see the module docstring).

    Args:
        counts: (C,) class sizes n.
        class_names: C names, needed for ``band.per_class`` overrides.
    Returns:
        start, stop: (C,) int64 with ``start = floor(low n + 1/2)``, ``stop = floor(high n + 1/2)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    low, high = class_limits(band, len(counts), class_names)
    n = counts.astype(np.float64)
    start = np.floor(low * n + 0.5 + _ROUND_TOL).astype(np.int64)
    stop = np.floor(high * n + 0.5 + _ROUND_TOL).astype(np.int64)
    return np.minimum(start, counts), np.minimum(stop, counts)


def _class_quantile(sorted_d: np.ndarray, counts: np.ndarray, offsets: np.ndarray,
                    p: float) -> np.ndarray:
    """(C,) quantile ``p`` of each class (linear interpolation, as numpy's default) from values
    sorted by (class, value); NaN for an empty class."""
    has = counts > 0
    pos = p * np.maximum(counts - 1, 0)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(counts - 1, 0))
    frac = pos - lo
    val = np.full(len(counts), np.nan)
    if len(sorted_d):
        a = sorted_d[np.where(has, offsets + lo, 0)].astype(np.float64)
        b = sorted_d[np.where(has, offsets + hi, 0)].astype(np.float64)
        val[has] = (a * (1 - frac) + b * frac)[has]
    return val


def robust_stats(distances: np.ndarray, labels: np.ndarray, num_classes: int, *,
                 ranks: tuple[np.ndarray, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-class median and MAD (median absolute deviation) of the distances.

    Returns:
        median, mad: (C,) float64, NaN for an empty class. Computed once per view (one extra
        sort) and passed to ``band_mask`` as ``robust=`` for the "zscore" outlier rule.
    """
    distances, labels = check_distances(distances, labels, num_classes)
    _, counts, order, offsets = ranks if ranks is not None else \
        _class_ranks(distances, labels, num_classes)
    median = _class_quantile(distances[order], counts, offsets, 0.5)
    dev = np.abs(distances.astype(np.float64) - np.nan_to_num(median)[labels])
    dev_order = np.lexsort((dev, labels))
    mad = _class_quantile(dev[dev_order], counts, offsets, 0.5)
    return median, mad


def outlier_thresholds(band: BandConfig, distances: np.ndarray, labels: np.ndarray,
                       num_classes: int, *, ranks: tuple[np.ndarray, ...] | None = None,
                       real_distances: np.ndarray | None = None,
                       real_labels: np.ndarray | None = None,
                       robust: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(C,) distance above which a sample is an outlier under ``band.outlier``.

    "real": the ``band.outlier_q`` quantile of the class's real images' distances (needs
    ``real_distances``/``real_labels``); "zscore": ``median + outlier_z * 1.4826 * MAD`` of the
    class's generated distances. +inf where no rule applies (rule "none", a class with no real
    image, or a MAD of 0).
    """
    out = np.full(num_classes, np.inf)
    if band.outlier == "real":
        if real_distances is None or real_labels is None:
            raise InvalidConfigError("outlier removal 'real' needs the real images' distances")
        rd, rl = check_distances(real_distances, real_labels, num_classes)
        _, rcounts, rorder, roffsets = _class_ranks(rd, rl, num_classes)
        q = _class_quantile(rd[rorder], rcounts, roffsets, band.outlier_q)
        out = np.where(np.isnan(q), np.inf, q)
    elif band.outlier == "zscore":
        median, mad = robust if robust is not None else \
            robust_stats(distances, labels, num_classes, ranks=ranks)
        ok = np.isfinite(median) & (mad > 0)
        out[ok] = median[ok] + band.outlier_z * 1.4826 * mad[ok]
    return out


def _target(mask: np.ndarray, labels: np.ndarray, order: np.ndarray, num_classes: int,
            band: BandConfig) -> np.ndarray:
    """Keep at most ``band.target_per_class`` of the kept samples of each class."""
    k = band.target_per_class
    kept_sorted = order[mask[order]]  # kept samples by (class, distance)
    lab = labels[kept_sorted]
    m = np.bincount(lab, minlength=num_classes)
    first = np.concatenate([[0], np.cumsum(m)[:-1]])
    if band.target_pick == "random":
        keys = np.random.default_rng(band.target_seed).random(len(labels))
        kept_sorted = kept_sorted[np.lexsort((keys[kept_sorted], lab))]
        pos = np.arange(len(kept_sorted)) - first[lab]
        keep = pos < k
    else:  # the contiguous middle k of the kept samples, by distance
        pos = np.arange(len(kept_sorted)) - first[lab]
        start = np.maximum((m - k) // 2, 0)
        keep = (pos >= start[lab]) & (pos < start[lab] + k)
    out = np.zeros_like(mask)
    out[kept_sorted[keep]] = True
    return out


def band_mask(distances: np.ndarray, labels: np.ndarray, band: BandConfig,
              num_classes: int, *, ranks: tuple[np.ndarray, ...] | None = None,
              class_names: Sequence[str] | None = None,
              real_distances: np.ndarray | None = None, real_labels: np.ndarray | None = None,
              robust: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Samples kept by a band, its outlier rule and its target count.

    Quantile mode: a class of n samples keeps ranks r (0-based, distance ascending, ties by
    index) with ``floor(low n + 1/2) <= r < floor(high n + 1/2)``, i.e. midpoint quantile
    ``(r + 1/2) / n`` in ``(low, high]``. The "middle" preset keeps exactly n/2 for even n.
    Distance mode: kept when ``low <= d <= high``. Per-class overrides replace (low, high) for
    their class. Then outliers (``outlier_thresholds``) are dropped, then at most
    ``target_per_class`` are kept per class (see ``BandConfig``).

    Args:
        distances: (N,) finite float distances to the class centroid.
        labels: (N,) int in ``[0, num_classes)``.
        band: the band (``BandConfig``).
        ranks: ``class_ranks(distances, labels, num_classes)`` when already computed.
        class_names: C names, needed for per-class overrides.
        real_distances / real_labels: (M,) the real images', needed for outlier rule "real".
        robust: ``robust_stats(...)`` when already computed (outlier rule "zscore").

    Returns:
        (N,) bool, True = kept.
    """
    labels = np.asarray(labels, dtype=np.int64)
    distances = np.asarray(distances)
    if ranks is None:
        distances, labels = check_distances(distances, labels, num_classes)
        ranks = _class_ranks(distances, labels, num_classes)
    rank, counts = ranks[0], ranks[1]
    # 1. the band itself, per class
    if band.mode == "quantile":
        start, stop = band_edges(counts, band, class_names)
        mask = (rank >= start[labels]) & (rank < stop[labels])
    else:
        low, high = class_limits(band, num_classes, class_names)
        mask = (distances >= low[labels]) & (distances <= high[labels])
    # 2. outliers (far side)
    if band.outlier != "none":
        thr = outlier_thresholds(band, distances, labels, num_classes, ranks=ranks,
                                 real_distances=real_distances, real_labels=real_labels,
                                 robust=robust)
        mask &= distances <= thr[labels]
    # 3. a target count per class
    if band.target_per_class > 0:
        mask = _target(mask, labels, ranks[2], num_classes, band)
    return mask


def kept_range(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
               num_classes: int) -> np.ndarray:
    """(C, 2) min and max distance of the kept samples of each class; NaN where none is kept."""
    out = np.full((num_classes, 2), np.nan, dtype=np.float64)
    kept_lab, kept_d = labels[mask], distances[mask].astype(np.float64)
    if len(kept_lab):
        lo = np.full(num_classes, np.inf)
        hi = np.full(num_classes, -np.inf)
        np.minimum.at(lo, kept_lab, kept_d)
        np.maximum.at(hi, kept_lab, kept_d)
        has = np.bincount(kept_lab, minlength=num_classes) > 0
        out[has, 0], out[has, 1] = lo[has], hi[has]
    return out


def band_thresholds(distances: np.ndarray, labels: np.ndarray, band: BandConfig,
                    num_classes: int) -> np.ndarray:
    """Distances at the edges of the band, per class.

    Returns:
        (C, 2) float64: column 0 the distance of the nearest kept sample (the low edge),
        column 1 the distance of the farthest kept sample (the high edge); NaN for a class
        that keeps nothing (empty, or too small for a narrow band).
    """
    mask = band_mask(distances, labels, band, num_classes)
    return kept_range(np.asarray(distances), np.asarray(labels, dtype=np.int64), mask,
                       num_classes)


def _kept_span(ranks: tuple[np.ndarray, ...], mask: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each class's kept samples lie in the class-sorted order (no ``ufunc.at``, no
    (N,) pass beyond one gather: a band change at 500,000 samples must stay in milliseconds).

    Returns:
        first, last: (C,) int64 first and last kept rank (first = max int64, last = -1 where
            nothing is kept);
        positions: (C, 2) int64 positions in ``order`` of those samples (-1 where none);
        kept: (C,) int64 kept samples per class;
        hits: (K,) int64 positions in ``order`` of every kept sample, ascending (a class's
            kept samples are ``hits[lo:lo + kept]``, in rank order).
    """
    _, counts, order, offsets = ranks
    hits = np.flatnonzero(np.asarray(mask, dtype=bool)[order])  # kept, in class-sorted order
    lo = np.searchsorted(hits, offsets)  # the first kept at or after each class's start
    hi = np.searchsorted(hits, offsets + counts) - 1  # the last kept before its end
    kept = (hi + 1 - lo).astype(np.int64)
    has = kept > 0
    pos = np.full((len(counts), 2), -1, dtype=np.int64)
    pos[has, 0], pos[has, 1] = hits[lo[has]], hits[hi[has]]
    first = np.where(has, pos[:, 0] - offsets, np.iinfo(np.int64).max)
    last = np.where(has, pos[:, 1] - offsets, -1)
    return first, last, pos, kept, hits


def _dropped_counts(counts: np.ndarray, first: np.ndarray, last: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per class, how many dropped samples lie below (near) and above (far) the kept ones.

    For an arbitrary mask, a dropped sample is "near" when its rank is below the first kept
    rank of its class and "far" when above the last; in a class that keeps nothing, the nearer
    half counts as near. Every rank below the first kept one is dropped (and every rank above
    the last), so the counts follow from ``_kept_span``'s first and last ranks alone.

    Returns:
        near, far: (C,) int64 (ranks ``0 .. near - 1`` are the near ones, the last ``far``
        ranks the far ones).
    """
    none_kept = last < 0
    half = counts // 2
    near = np.where(none_kept, half, first)
    far = counts - 1 - np.where(none_kept, half - 1, last)
    return near.astype(np.int64), far.astype(np.int64)


def class_means(distances: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float64 mean distance per class (NaN for an empty class)."""
    sums = np.bincount(labels, weights=np.asarray(distances).astype(np.float64),
                       minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.bincount(labels, minlength=num_classes)


def band_summary(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 class_names: Sequence[str], *,
                 ranks: tuple[np.ndarray, ...] | None = None,
                 means: np.ndarray | None = None) -> pd.DataFrame:
    """One row per class: what the band kept and dropped.

    Args:
        distances: (N,) float; labels: (N,) int; mask: (N,) bool kept;
        class_names: C names (index = label).
        ranks / means: ``class_ranks`` / ``class_means`` of these distances when already
            computed (no band moves them).

    Returns:
        DataFrame with columns class, total, kept, dropped_near, dropped_far, dropped_inside
        (holes, only for masks that are not one band), low_distance and high_distance (min and
        max kept distance, NaN if none kept), mean_distance (over all samples of the class).
    """
    num_classes = len(class_names)
    distances, labels = check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    ranks = ranks if ranks is not None else _class_ranks(distances, labels, num_classes)
    counts, order = ranks[1], ranks[2]
    first, last, pos, kept, _ = _kept_span(ranks, mask)
    n_near, n_far = _dropped_counts(counts, first, last)
    # the kept distances' range: within a class the order is by distance, so its first and
    # last kept samples hold the minimum and the maximum
    edges = np.full((num_classes, 2), np.nan, dtype=np.float64)
    has = pos[:, 0] >= 0
    edges[has] = distances[order[pos[has]]].astype(np.float64)
    mean = class_means(distances, labels, num_classes) if means is None else means
    return pd.DataFrame({
        "class": list(class_names),
        "total": counts,
        "kept": kept,
        "dropped_near": n_near,
        "dropped_far": n_far,
        "dropped_inside": counts - kept - n_near - n_far,
        "low_distance": edges[:, 0],
        "high_distance": edges[:, 1],
        "mean_distance": mean,
    })


def _class_runs(starts: np.ndarray, lengths: np.ndarray, k: int, step: int) -> np.ndarray:
    """Positions ``starts[c] + step * j`` for ``j < min(k, lengths[c])``, every class c."""
    j = np.arange(k, dtype=np.int64)
    take = j[None, :] < np.minimum(lengths, k)[:, None]  # (C, k)
    return (starts[:, None] + step * j[None, :])[take]


def edge_samples(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 k: int, ranks: tuple[np.ndarray, ...] | None = None
                 ) -> dict[str, np.ndarray]:
    """Sample indices for galleries at the band's edges, pooled over all classes.

    Samples are ordered by their within-class quantile ``(r + 1/2) / n`` (then by distance), so
    every class contributes in turn rather than the class with the smallest distances taking all
    k places.

    Returns:
        dict of (<= k,) int64 index arrays:
        "nearest_kept": kept samples just inside the band's low edge;
        "farthest_kept": kept samples just inside the high edge;
        "nearest_dropped": the nearest samples dropped below the band (near-prototypes);
        "farthest_dropped": the farthest samples dropped above the band (outliers).

    ``ranks``: ``class_ranks`` of these distances, computed once (a band change then sorts
    nothing). Within a class the quantile grows with the rank, so only a class's first (or
    last) k samples of a gallery's kind can be among its k: those candidates (at most k per
    class) are read from the class-sorted order and ordered as the full sort would order them
    (quantile, distance, then index).
    """
    if k < 0:
        raise InvalidConfigError(f"k must be >= 0, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = num_classes_of(labels)
    distances, labels = check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    ranks = ranks if ranks is not None else _class_ranks(distances, labels, num_classes)
    rank, counts, order, offsets = ranks
    first, last, _, kept, hits = _kept_span(ranks, mask)
    n_near, n_far = _dropped_counts(counts, first, last)
    lo = np.searchsorted(hits, offsets)  # each class's first kept sample in ``hits``

    def pick(candidates: np.ndarray, ascending: bool) -> np.ndarray:
        idx = np.sort(candidates)  # index order: the full sort's last tie-break
        sign = 1.0 if ascending else -1.0
        key = sign * ((rank[idx] + 0.5) / np.maximum(counts[labels[idx]], 1))
        order_k = np.lexsort((sign * distances[idx], key))
        return idx[order_k[:k]].astype(np.int64)

    return {
        "nearest_kept": pick(order[hits[_class_runs(lo, kept, k, 1)]], True),
        "farthest_kept": pick(order[hits[_class_runs(lo + kept - 1, kept, k, -1)]], False),
        "nearest_dropped": pick(order[_class_runs(offsets, n_near, k, 1)], True),
        "farthest_dropped": pick(order[_class_runs(offsets + counts - 1, n_far, k, -1)],
                                 False),
    }


# ----------------------------------------------------------------------------------------------
# box statistics (what the studio's band figure draws)


def box_stats(distances: np.ndarray, labels: np.ndarray, num_classes: int,
              ranks: tuple[np.ndarray, ...] | None = None) -> pd.DataFrame:
    """Exact per-class box statistics (min, q1, median, q3, max, mean, n), vectorised.

    Args:
        distances: (N,) finite float; labels: (N,) int in ``[0, num_classes)`` (both checked
            already, e.g. by ``check_distances``).
        ranks: ``class_ranks`` of these distances when already computed (no sort again).

    Returns:
        DataFrame of C rows (index = label): n, min, q1, median, q3, max, mean (NaN when n = 0).
    """
    _, counts, order, offsets = ranks if ranks is not None else _class_ranks(
        distances, labels, num_classes)
    sorted_d = distances[order].astype(np.float64)
    cols: dict[str, np.ndarray] = {"n": counts}
    for name, p in (("min", 0.0), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("max", 1.0)):
        cols[name] = _class_quantile(sorted_d, counts, offsets, p)
    sums = np.bincount(labels, weights=distances.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["mean"] = sums / counts
    return pd.DataFrame(cols)
