"""Curation in the representation space: class centroids, distance bands, selections, metrics.

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
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent, ProgressFn, no_progress

log = logging.getLogger(__name__)

METRICS = ("cosine", "euclidean")
COMBINE_OPS = ("union", "intersection", "difference")
DEFAULT_CHUNK = 65_536  # rows per read: 65,536 x 768 float32 = 192 MiB peak in float32
_EPS = 1e-12
_ROUND_TOL = 1e-9  # absorbs float error in low * n (e.g. 0.35 * 20 = 6.999999999999999)


# ----------------------------------------------------------------------------------------------
# validation helpers


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InvalidConfigError(f"metric must be one of {METRICS}, got {metric!r}")


def _check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InvalidConfigError(f"labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InvalidConfigError(f"labels must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise InvalidConfigError(
            f"labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64, copy=False)


def _check_emb(emb: np.ndarray, name: str = "emb") -> None:
    if getattr(emb, "ndim", None) != 2:
        raise InvalidConfigError(f"{name} must be a 2-D (N, D) array, got shape "
                                 f"{getattr(emb, 'shape', None)}")


def _num_classes_of(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if len(labels) else 0


def _normalise(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows; zero rows stay zero. x: (n, D) float -> (n, D) same dtype."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, _EPS).astype(x.dtype)


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
    _check_metric(metric)
    _check_emb(emb)
    n, d = emb.shape
    labels = _check_labels(labels, n, num_classes)
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
            weight = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), _EPS)
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
        centroids = np.where(np.isnan(norm), np.nan, centroids / np.maximum(norm, _EPS))
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
    _check_metric(metric)
    _check_emb(emb)
    _check_emb(centroids, "centroids")
    n, d = emb.shape
    if centroids.shape[1] != d:
        raise InvalidConfigError(
            f"centroids have dimension {centroids.shape[1]} but embeddings have {d}")
    labels = _check_labels(labels, n, centroids.shape[0])
    cents = np.asarray(centroids, dtype=np.float32)
    if metric == "cosine":
        cents = _normalise(cents)  # NaN rows stay NaN
    out = np.empty(n, dtype=np.float32)
    total = max(1, -(-n // chunk_size))
    report = _Reporter(progress, "distances", total)
    for step, start in enumerate(range(0, n, chunk_size), start=1):
        if cancel is not None:
            cancel.raise_if_cancelled()
        x = np.asarray(emb[start:start + chunk_size], dtype=np.float32)  # (b, D)
        c = cents[labels[start:start + chunk_size]]  # (b, D)
        if metric == "cosine":
            norm = np.maximum(np.sqrt(np.einsum("ij,ij->i", x, x)), _EPS)
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
    distances, labels = _check_distances(distances, labels, num_classes)
    return _class_ranks(distances, labels, num_classes)


def _check_distances(distances: np.ndarray, labels: np.ndarray, num_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    distances = np.asarray(distances)
    if distances.ndim != 1:
        raise InvalidConfigError(f"distances must be 1-D, got shape {distances.shape}")
    labels = _check_labels(labels, len(distances), num_classes)
    bad = ~np.isfinite(distances)
    if bad.any():
        classes = np.unique(labels[bad])[:10].tolist()
        raise InvalidConfigError(
            f"{int(bad.sum())} distances are not finite (classes {classes}): their class has "
            "no centroid, e.g. no real image of that class")
    return distances, labels


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
    distances, labels = _check_distances(distances, labels, num_classes)
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
        rd, rl = _check_distances(real_distances, real_labels, num_classes)
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
        distances, labels = _check_distances(distances, labels, num_classes)
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


def _kept_range(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
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
    return _kept_range(np.asarray(distances), np.asarray(labels, dtype=np.int64), mask,
                       num_classes)


def _dropped_sides(rank: np.ndarray, counts: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                   num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Which dropped samples lie below (near) and above (far) the kept ones of their class.

    For an arbitrary mask, a dropped sample is "near" when its rank is below the first kept rank
    of its class and "far" when above the last; in a class that keeps nothing, the nearer half
    counts as near. Returns two (N,) bool arrays.
    """
    first = np.full(num_classes, np.iinfo(np.int64).max)
    last = np.full(num_classes, -1)
    np.minimum.at(first, labels[mask], rank[mask])
    np.maximum.at(last, labels[mask], rank[mask])
    none_kept = last < 0
    half = counts // 2
    first = np.where(none_kept, half, first)
    last = np.where(none_kept, half - 1, last)
    dropped = ~mask
    return dropped & (rank < first[labels]), dropped & (rank > last[labels])


def band_summary(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 class_names: Sequence[str], *,
                 ranks: tuple[np.ndarray, ...] | None = None) -> pd.DataFrame:
    """One row per class: what the band kept and dropped.

    Args:
        distances: (N,) float; labels: (N,) int; mask: (N,) bool kept;
        class_names: C names (index = label).

    Returns:
        DataFrame with columns class, total, kept, dropped_near, dropped_far, dropped_inside
        (holes, only for masks that are not one band), low_distance and high_distance (min and
        max kept distance, NaN if none kept), mean_distance (over all samples of the class).
    """
    num_classes = len(class_names)
    distances, labels = _check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    rank, counts = (ranks if ranks is not None else
                    _class_ranks(distances, labels, num_classes))[:2]
    near, far = _dropped_sides(rank, counts, labels, mask, num_classes)
    kept = np.bincount(labels[mask], minlength=num_classes)
    n_near = np.bincount(labels[near], minlength=num_classes)
    n_far = np.bincount(labels[far], minlength=num_classes)
    edges = _kept_range(distances, labels, mask, num_classes)
    sums = np.bincount(labels, weights=distances.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
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


def edge_samples(distances: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                 k: int) -> dict[str, np.ndarray]:
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
    """
    if k < 0:
        raise InvalidConfigError(f"k must be >= 0, got {k}")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = _num_classes_of(labels)
    distances, labels = _check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    rank, counts, _, _ = _class_ranks(distances, labels, num_classes)
    near, far = _dropped_sides(rank, counts, labels, mask, num_classes)
    q = (rank + 0.5) / np.maximum(counts[labels], 1)

    def pick(which: np.ndarray, ascending: bool) -> np.ndarray:
        idx = np.flatnonzero(which)
        sign = 1.0 if ascending else -1.0
        order = np.lexsort((sign * distances[idx], sign * q[idx]))
        return idx[order[:k]].astype(np.int64)

    return {
        "nearest_kept": pick(mask, True),
        "farthest_kept": pick(mask, False),
        "nearest_dropped": pick(near, True),
        "farthest_dropped": pick(far, False),
    }


# ----------------------------------------------------------------------------------------------
# figure


def _box_stats(distances: np.ndarray, labels: np.ndarray, num_classes: int) -> pd.DataFrame:
    """Exact per-class box statistics (min, q1, median, q3, max, mean, n), vectorised."""
    _, counts, order, offsets = _class_ranks(distances, labels, num_classes)
    sorted_d = distances[order].astype(np.float64)
    cols: dict[str, np.ndarray] = {"n": counts}
    for name, p in (("min", 0.0), ("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("max", 1.0)):
        cols[name] = _class_quantile(sorted_d, counts, offsets, p)
    sums = np.bincount(labels, weights=distances.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols["mean"] = sums / counts
    return pd.DataFrame(cols)


def band_figure(distances: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                mask: np.ndarray, real_distances: np.ndarray | None = None,
                real_labels: np.ndarray | None = None, *, metric: str = "cosine"):
    """Per-class distance distributions with the kept band shaded.

    One box per class for the synthetic samples (and one beside it for the real images when
    ``real_distances`` / ``real_labels`` are given). The box statistics (whiskers = min and max,
    box = quartiles, dashed line = mean) are computed exactly in numpy, so only a few numbers per
    class reach the browser whatever N is: no point downsampling is needed. A shaded rectangle
    per class spans the distances of its kept synthetic samples (low to high edge).

    Args:
        distances: (N,) synthetic distances; labels: (N,) int; mask: (N,) bool kept;
        class_names: C names; real_distances / real_labels: (M,) optional;
        metric: only used to label the y axis.

    Returns:
        plotly.graph_objects.Figure (template "plotly_white"), readable at 1280 x 800.
    """
    import plotly.graph_objects as go

    names = [str(c) for c in class_names]
    num_classes = len(names)
    distances, labels = _check_distances(distances, labels, num_classes)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != distances.shape:
        raise InvalidConfigError(f"mask must have shape {distances.shape}, got {mask.shape}")
    syn = _box_stats(distances, labels, num_classes)
    real = None
    if real_distances is not None and real_labels is not None:
        rd, rl = _check_distances(real_distances, real_labels, num_classes)
        real = _box_stats(rd, rl, num_classes)
    present = syn["n"].to_numpy() > 0
    if real is not None:
        present |= real["n"].to_numpy() > 0
    shown = np.flatnonzero(present)
    x_names = [names[i] for i in shown]
    position = {int(c): j for j, c in enumerate(shown)}

    fig = go.Figure()

    def add_box(stats: pd.DataFrame, label: str, color: str) -> None:
        rows = stats.iloc[shown]
        ok = rows["n"].to_numpy() > 0
        fig.add_trace(go.Box(
            name=label, x=[x for x, o in zip(x_names, ok) if o],
            lowerfence=rows["min"][ok], q1=rows["q1"][ok], median=rows["median"][ok],
            q3=rows["q3"][ok], upperfence=rows["max"][ok], mean=rows["mean"][ok],
            boxmean=True, marker_color=color, offsetgroup=label, boxpoints=False,
        ))

    add_box(syn, "synthetic", "#4C72B0")
    if real is not None:
        add_box(real, "real", "#DD8452")

    # kept band: one rectangle per class between its low and high edges
    # (all shapes set at once: one add_shape per class re-validates the layout each time,
    # which took seconds at 100 classes)
    edges = _kept_range(distances, labels, mask, num_classes)
    shapes = [dict(type="rect", xref="x", yref="y", x0=position[int(c)] - 0.45,
                   x1=position[int(c)] + 0.45, y0=float(edges[c][0]), y1=float(edges[c][1]),
                   fillcolor="rgba(44, 160, 44, 0.18)", line=dict(width=0), layer="below")
              for c in shown if not np.isnan(edges[c][0])]
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="kept band",
                             marker=dict(symbol="square", size=14,
                                         color="rgba(44, 160, 44, 0.35)")))
    kept, total = int(mask.sum()), int(len(mask))
    axis = "cosine distance (1 - cos)" if metric == "cosine" else "euclidean distance"
    fig.update_layout(
        template="plotly_white", boxmode="group", height=600, shapes=shapes,
        title=dict(text=f"Distance to the class centroid per class: kept band shaded "
                        f"({kept:,} of {total:,} synthetic samples kept)", x=0.01),
        xaxis_title="class", yaxis_title=f"{axis} to the class centroid",
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        margin=dict(l=70, r=20, t=80, b=90),
    )
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=x_names,
                     tickangle=-45 if len(x_names) > 12 else 0)
    return fig


# ----------------------------------------------------------------------------------------------
# generative metrics


def _mean_cov(x: np.ndarray, chunk_size: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64, reading (N, D) in chunks."""
    n, d = x.shape
    s = np.zeros(d)
    ss = np.zeros((d, d))
    # shift by the first row for numerical stability of the sum of squares
    shift = np.asarray(x[0], dtype=np.float64)
    for start in range(0, n, chunk_size):
        b = np.asarray(x[start:start + chunk_size], dtype=np.float64) - shift
        s += b.sum(axis=0)
        ss += b.T @ b
    mean_shifted = s / n
    cov = (ss - n * np.outer(mean_shifted, mean_shifted)) / (n - 1)
    return mean_shifted + shift, cov


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets.

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances.

    Args:
        a: (N, D) float, N >= 2; b: (M, D) float, M >= 2 (memmaps allowed).

    Returns:
        float >= 0 (tiny negative round-off is clipped to 0).
    """
    import scipy.linalg

    a = a if isinstance(a, np.ndarray) else np.asarray(a)  # keeps memmaps as they are
    b = b if isinstance(b, np.ndarray) else np.asarray(b)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    _check_emb(a, "a")
    _check_emb(b, "b")
    if a.shape[1] != b.shape[1]:
        raise InvalidConfigError(f"dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise InvalidConfigError(
            f"frechet_distance needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu1, s1 = _mean_cov(a)
    mu2, s2 = _mean_cov(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        # singular product (N < D): regularise, as pytorch-fid does
        offset = np.eye(s1.shape[0]) * 1e-6
        log.warning("frechet_distance: singular covariance product, adding %g to the diagonal",
                    1e-6)
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > 1e-3 * max(1.0, np.max(np.abs(covmean.real))):
            log.warning("frechet_distance: sqrtm has an imaginary part of %g; using its real part",
                        imag)
        covmean = covmean.real
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def conditioning_fidelity(source_emb: np.ndarray, generated_emb: np.ndarray,
                          *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """Cosine similarity between each source representation and its generated re-encoding.

    Args:
        source_emb: (N, D) the representation each sample was conditioned on (row i = sample i).
        generated_emb: (N, D) the generated image re-encoded with the same encoder.

    Returns:
        (N,) float32 in [-1, 1] (0 where either vector is zero).
    """
    _check_emb(source_emb, "source_emb")
    _check_emb(generated_emb, "generated_emb")
    if source_emb.shape != generated_emb.shape:
        raise InvalidConfigError(
            f"source and generated embeddings must have the same shape, got {source_emb.shape} "
            f"and {generated_emb.shape}")
    n = source_emb.shape[0]
    out = np.empty(n, dtype=np.float32)
    for start in range(0, n, chunk_size):
        s = _normalise(np.asarray(source_emb[start:start + chunk_size], dtype=np.float32))
        g = _normalise(np.asarray(generated_emb[start:start + chunk_size], dtype=np.float32))
        out[start:start + len(s)] = np.einsum("ij,ij->i", s, g)
    return out


# ----------------------------------------------------------------------------------------------
# selections


def combine(a_idx: np.ndarray, b_idx: np.ndarray, op: str) -> np.ndarray:
    """Set operation on two selections of sample indices.

    Args:
        a_idx, b_idx: 1-D int arrays (any order, duplicates allowed).
        op: "union" (a or b), "intersection" (a and b) or "difference" (a and not b).

    Returns:
        sorted unique int64 array.
    """
    a = np.asarray(a_idx, dtype=np.int64).ravel()
    b = np.asarray(b_idx, dtype=np.int64).ravel()
    if op == "union":
        return np.union1d(a, b).astype(np.int64)
    if op == "intersection":
        return np.intersect1d(a, b).astype(np.int64)
    if op == "difference":
        return np.setdiff1d(a, b).astype(np.int64)
    raise InvalidConfigError(f"op must be one of {COMBINE_OPS}, got {op!r}")


# ----------------------------------------------------------------------------------------------
# 2-D map


MAP_METHODS = ("pca", "tsne")


def embedding_map(real: np.ndarray, real_labels: np.ndarray, syn: np.ndarray,
                  syn_labels: np.ndarray, *, method: str = "pca", max_points: int = 5_000,
                  seed: int = 0) -> pd.DataFrame:
    """2-D coordinates of a stratified, seeded subsample of real + synthetic representations.

    At most ``max_points`` rows in all, shared between real and synthetic in proportion to
    their sizes and, inside each, between classes in proportion (``gen_metrics.subsample``), so
    the map costs the same at 5,000 or 500,000 samples. Only the picked rows are read from the
    (memory-mapped) arrays. "pca": the first two principal components of the picked rows
    (L2-normalised first); "tsne": scikit-learn's t-SNE of them (slower: seconds per 1,000).
    The coordinates do not depend on the band: compute once per (generation, encoding), then
    colour by any mask with ``map_figure``.

    Returns:
        DataFrame with x, y, kind ("real" / "synthetic"), label, index (row in its own array).
    """
    from engine.gen_metrics import subsample

    if method not in MAP_METHODS:
        raise InvalidConfigError(f"method must be one of {MAP_METHODS}, got {method!r}")
    if max_points < 2:
        raise InvalidConfigError(f"max_points must be >= 2, got {max_points}")
    _check_emb(real, "real")
    _check_emb(syn, "syn")
    n_real, n_syn = len(real), len(syn)
    total = n_real + n_syn
    take_real = min(n_real, int(round(max_points * n_real / max(total, 1))))
    take_syn = min(n_syn, max_points - take_real)
    ri = subsample(n_real, take_real, seed, real_labels)
    si = subsample(n_syn, take_syn, seed + 1, syn_labels)
    x = np.concatenate([np.asarray(real[ri], dtype=np.float32),
                        np.asarray(syn[si], dtype=np.float32)])  # (P, D), P <= max_points
    x = _normalise(x)
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


def map_figure(points: pd.DataFrame, mask: np.ndarray, class_names: Sequence[str], *,
               method: str = "pca"):
    """Plotly scatter of an ``embedding_map``: colour = class, marker = real (circle), kept
    synthetic (diamond) or dropped synthetic (x, faded).

    Args:
        points: ``embedding_map`` output; mask: (N_syn,) bool kept, indexed by ``index``.

    Returns:
        plotly.graph_objects.Figure (one WebGL trace per class and kind).
    """
    import plotly.express as px
    import plotly.graph_objects as go

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
