"""Curation bands: centroids, distances, the band rule, its options, summaries and edges
(pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import BandConfig
from engine.curation.bands import (
    band_edges,
    band_mask,
    band_summary,
    band_thresholds,
    centroid_distances,
    class_centroids,
    class_ranks,
    edge_samples,
)
from engine.errors import Cancelled, InvalidConfigError
from engine.progress import CancelToken, ProgressEvent


def _random(n=600, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    emb = (rng.normal(size=(n, d)) + labels[:, None] * 0.5).astype(np.float32)
    return emb, labels


# ---------------------------------------------------------------------------- centroids


def test_centroids_pinned_euclidean_and_cosine():
    emb = np.array([[1, 0], [3, 0], [0, 2], [0, 4], [5, 5]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 0])
    euc = class_centroids(emb, labels, 3, "euclidean")
    np.testing.assert_allclose(euc[0], [3, 5 / 3], rtol=1e-6)
    np.testing.assert_allclose(euc[1], [0, 3], rtol=1e-6)
    assert np.isnan(euc[2]).all()  # empty class -> NaN row

    cos = class_centroids(emb, labels, 3, "cosine")
    # class 0: normalised rows (1,0), (1,0), (1/sqrt2, 1/sqrt2); mean re-normalised
    m = np.array([2 + 2 ** -0.5, 2 ** -0.5])
    np.testing.assert_allclose(cos[0], m / np.linalg.norm(m), rtol=1e-6)
    np.testing.assert_allclose(cos[1], [0, 1], atol=1e-7)
    assert np.isnan(cos[2]).all()
    assert cos.dtype == np.float32 and cos.shape == (3, 2)


def test_centroids_and_distances_chunked_equal_unchunked(tmp_path):
    emb, labels = _random()
    path = tmp_path / "emb.npy"
    np.save(path, emb)
    mm = np.load(path, mmap_mode="r")
    for metric in ("cosine", "euclidean"):
        full = class_centroids(emb, labels, 5, metric, chunk_size=10_000)
        chunked = class_centroids(mm, labels, 5, metric, chunk_size=7)
        np.testing.assert_allclose(chunked, full, rtol=1e-5, atol=1e-6)
        d_full = centroid_distances(emb, labels, full, metric, chunk_size=10_000)
        d_chunk = centroid_distances(mm, labels, full, metric, chunk_size=13)
        np.testing.assert_array_equal(d_chunk, d_full)
        assert d_full.dtype == np.float32 and d_full.shape == (600,)


def test_distances_pinned():
    emb = np.array([[1, 0], [0, 2], [3, 4]], dtype=np.float32)
    labels = np.array([0, 0, 1])
    cents = np.array([[1, 1], [0, 1]], dtype=np.float32)
    cos = centroid_distances(emb, labels, cents, "cosine")
    np.testing.assert_allclose(cos, [1 - 2 ** -0.5, 1 - 2 ** -0.5, 1 - 0.8], rtol=1e-6)
    euc = centroid_distances(emb, labels, cents, "euclidean")
    np.testing.assert_allclose(euc, [1, np.sqrt(2), np.sqrt(9 + 9)], rtol=1e-6)


def test_centroid_progress_and_cancel():
    emb, labels = _random(n=100)
    events: list[ProgressEvent] = []
    class_centroids(emb, labels, 5, chunk_size=10, progress=events.append)
    assert events[-1].step == events[-1].total == 10
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        centroid_distances(emb, labels, np.zeros((5, 12), np.float32), cancel=token)


def test_bad_inputs_raise_named_errors():
    emb, labels = _random(n=20)
    with pytest.raises(InvalidConfigError, match="metric"):
        class_centroids(emb, labels, 5, "manhattan")
    with pytest.raises(InvalidConfigError, match="labels must be in"):
        class_centroids(emb, labels, 2, "cosine")
    d = np.ones(20, np.float32)
    d[3] = np.nan
    with pytest.raises(InvalidConfigError, match="not finite"):
        band_mask(d, labels, BandConfig(), 5)


# ---------------------------------------------------------------------------- bands


def test_band_mask_hand_worked_example():
    # class 0 has 10 samples, class 1 has 4, class 2 has 5; distances deliberately shuffled
    d0 = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0])
    d1 = np.array([0.4, 0.1, 0.3, 0.2])
    d2 = np.array([0.5, 0.1, 0.4, 0.2, 0.3])
    distances = np.concatenate([d0, d1, d2]).astype(np.float32)
    labels = np.array([0] * 10 + [1] * 4 + [2] * 5)
    mask = band_mask(distances, labels, BandConfig.preset("middle"), 3)
    # n=10: start=floor(2.5+.5)=3, stop=floor(7.5+.5)=8 -> ranks 3..7 = distances .3 .. .7
    np.testing.assert_array_equal(np.sort(distances[:10][mask[:10]]),
                                  np.float32([0.3, 0.4, 0.5, 0.6, 0.7]))
    # n=4: start=1, stop=3 -> .2, .3
    np.testing.assert_array_equal(np.sort(distances[10:14][mask[10:14]]), np.float32([0.2, 0.3]))
    # n=5: start=floor(1.75)=1, stop=floor(4.25)=4 -> .2 .3 .4
    np.testing.assert_array_equal(np.sort(distances[14:][mask[14:]]),
                                  np.float32([0.2, 0.3, 0.4]))
    np.testing.assert_array_equal(
        mask.astype(int),
        [0, 0, 1, 1, 1, 0, 0, 1, 1, 0] + [0, 0, 1, 1] + [0, 0, 1, 1, 1])


def test_band_middle_keeps_exactly_half_of_even_classes():
    rng = np.random.default_rng(1)
    sizes = np.array([2, 4, 6, 10, 14, 98, 130, 2600])  # 2x of n/2 sources
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng.shuffle(labels)
    distances = rng.random(len(labels)).astype(np.float32)
    mask = band_mask(distances, labels, BandConfig.preset("middle"), len(sizes))
    np.testing.assert_array_equal(np.bincount(labels[mask], minlength=len(sizes)), sizes // 2)
    # keep_fraction 0.25 of a multiple of 4 keeps exactly a quarter
    mask = band_mask(distances, labels, BandConfig.preset("middle", 0.25), len(sizes))
    assert np.bincount(labels[mask])[-1] == 650


def test_band_rule_is_midpoint_quantile_and_partitions():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, 333)
    distances = rng.random(333)
    counts = np.bincount(labels)
    rank = np.empty(333, int)
    for c in range(7):  # reference: rank by a plain loop (test only)
        idx = np.flatnonzero(labels == c)
        rank[idx[np.argsort(distances[idx], kind="stable")]] = np.arange(len(idx))
    q = (rank + 0.5) / counts[labels]
    edges = [0.0, 0.1, 0.35, 0.5, 0.65, 0.9, 1.0]
    total = np.zeros(333, int)
    for low, high in zip(edges[:-1], edges[1:]):
        mask = band_mask(distances, labels, BandConfig(low=low, high=high), 7)
        np.testing.assert_array_equal(mask, (q > low) & (q <= high))
        total += mask
    np.testing.assert_array_equal(total, 1)  # adjacent bands partition every class


def test_presets_nearest_farthest_all():
    distances = np.arange(8, dtype=np.float32)
    labels = np.zeros(8, int)
    near = band_mask(distances, labels, BandConfig.preset("nearest"), 1)
    far = band_mask(distances, labels, BandConfig.preset("farthest"), 1)
    np.testing.assert_array_equal(np.flatnonzero(near), [0, 1, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(far), [4, 5, 6, 7])
    assert band_mask(distances, labels, BandConfig.preset("all"), 1).all()
    start, stop = band_edges(np.array([0, 1, 7]), BandConfig.preset("farthest", 0.3))
    np.testing.assert_array_equal(stop, [0, 1, 7])  # the farthest sample is always kept


def test_band_thresholds_and_summary():
    distances = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0, 5.0, 6.0],
                         dtype=np.float32)
    labels = np.array([0] * 10 + [1] * 2)
    band = BandConfig.preset("middle")
    thr = band_thresholds(distances, labels, band, 3)
    np.testing.assert_allclose(thr[0], [0.3, 0.7], rtol=1e-6)
    np.testing.assert_allclose(thr[1], [6.0, 6.0])  # n=2 keeps rank 1
    assert np.isnan(thr[2]).all()
    mask = band_mask(distances, labels, band, 3)
    summary = band_summary(distances, labels, mask, ["cat", "dog", "emu"])
    assert list(summary.columns[:6]) == ["class", "total", "kept", "dropped_near",
                                         "dropped_far", "dropped_inside"]
    row = summary.iloc[0]
    assert (row["total"], row["kept"], row["dropped_near"], row["dropped_far"]) == (10, 5, 3, 2)
    assert row["low_distance"] == pytest.approx(0.3) and row["high_distance"] == pytest.approx(0.7)
    assert row["mean_distance"] == pytest.approx(0.45)
    assert tuple(summary.iloc[1][["total", "kept", "dropped_near", "dropped_far"]]) == (2, 1, 1, 0)
    assert summary.iloc[2]["total"] == 0


def test_edge_samples():
    # two classes of 8 with the middle band: ranks 2..5 kept
    distances = np.concatenate([np.arange(8), np.arange(8) + 100]).astype(np.float32)
    labels = np.repeat([0, 1], 8)
    mask = band_mask(distances, labels, BandConfig.preset("middle"), 2)
    edges = edge_samples(distances, labels, mask, k=2)
    np.testing.assert_array_equal(edges["nearest_kept"], [2, 10])  # one per class, not [2, 3]
    np.testing.assert_array_equal(edges["farthest_kept"], [13, 5])
    np.testing.assert_array_equal(edges["nearest_dropped"], [0, 8])
    np.testing.assert_array_equal(edges["farthest_dropped"], [15, 7])
    assert all(v.dtype == np.int64 for v in edges.values())
    assert len(edge_samples(distances, labels, mask, k=100)["nearest_dropped"]) == 4


# ---------------------------------------------------------------------------- band options


def _two_classes():
    # class 0: distances 0.0 .. 0.9, class 1: 1.0 .. 1.9 (10 each, interleaved)
    d = np.concatenate([np.arange(10) * 0.1, 1.0 + np.arange(10) * 0.1])
    labels = np.repeat([0, 1], 10)
    perm = np.random.default_rng(0).permutation(20)
    return d[perm], labels[perm], perm


def test_band_by_distance_and_per_class_overrides():
    d, labels, _ = _two_classes()
    band = BandConfig(mode="distance", low=0.25, high=1.35)
    kept = np.sort(d[band_mask(d, labels, band, 2)])
    np.testing.assert_allclose(kept, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3])
    # per class: class "b" keeps its own window; quantile overrides work the same way
    band = band.replace(per_class={"b": (1.55, 1.9)})
    mask = band_mask(d, labels, band, 2, class_names=["a", "b"])
    np.testing.assert_allclose(np.sort(d[mask & (labels == 1)]), [1.6, 1.7, 1.8, 1.9])
    q = BandConfig(low=0.0, high=1.0, per_class=[("a", 0.0, 0.3)])
    assert np.bincount(labels[band_mask(d, labels, q, 2, class_names=["a", "b"])]).tolist() \
        == [3, 10]
    with pytest.raises(InvalidConfigError):
        band_mask(d, labels, q, 2, class_names=["x", "y"])  # unknown class
    with pytest.raises(InvalidConfigError):
        BandConfig(low=0.1, high=1.5)  # quantiles above 1
    assert BandConfig.from_dict(q.to_dict()) == q  # JSON round trip of the overrides


def test_outlier_removal_real_quantile_and_zscore():
    d, labels, _ = _two_classes()
    d = d.copy()
    far = np.flatnonzero((labels == 0) & np.isclose(d, 0.9))[0]
    d[far] = 50.0  # one far outlier in class 0
    real_d = np.concatenate([np.linspace(0, 1.0, 11), np.linspace(1.0, 2.0, 11)])
    real_l = np.repeat([0, 1], 11)
    allb = BandConfig(low=0.0, high=1.0, outlier="real", outlier_q=1.0)
    mask = band_mask(d, labels, allb, 2, real_distances=real_d, real_labels=real_l)
    assert not mask[far] and mask.sum() == 19  # only the outlier is farther than every real
    with pytest.raises(InvalidConfigError):
        band_mask(d, labels, allb, 2)  # the "real" rule needs the real distances
    z = BandConfig(low=0.0, high=1.0, outlier="zscore", outlier_z=3.5)
    mask = band_mask(d, labels, z, 2)
    assert not mask[far] and mask.sum() == 19


def test_target_count_centre_and_random():
    d, labels, _ = _two_classes()
    centre = BandConfig(low=0.0, high=1.0, target_per_class=4)
    mask = band_mask(d, labels, centre, 2)
    np.testing.assert_allclose(np.sort(d[mask]), [0.3, 0.4, 0.5, 0.6, 1.3, 1.4, 1.5, 1.6])
    rnd = centre.replace(target_pick="random", target_seed=1)
    m1, m2 = band_mask(d, labels, rnd, 2), band_mask(d, labels, rnd, 2)
    np.testing.assert_array_equal(m1, m2)  # seeded
    assert np.bincount(labels[m1]).tolist() == [4, 4]
    assert not np.array_equal(m1, band_mask(d, labels, rnd.replace(target_seed=2), 2))
    # a target above what the band keeps changes nothing
    mid = BandConfig(low=0.25, high=0.75)
    np.testing.assert_array_equal(band_mask(d, labels, mid.replace(target_per_class=9), 2),
                                  band_mask(d, labels, mid, 2))


def test_edge_samples_with_cached_ranks_match_a_full_sort_on_ties():
    # quantised distances: many ties in quantile and distance, where a partition could differ
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 7, 5_000)
    distances = np.round(rng.random(5_000), 2).astype(np.float32)
    mask = band_mask(distances, labels, BandConfig.preset("middle"), 7)
    ranks = class_ranks(distances, labels, 7)
    q = (ranks[0] + 0.5) / ranks[1][labels]
    for k in (1, 12, 700):
        fast = edge_samples(distances, labels, mask, k, ranks=ranks)
        assert {kk: v.tolist() for kk, v in fast.items()} == {
            kk: v.tolist() for kk, v in edge_samples(distances, labels, mask, k).items()}
        idx = np.flatnonzero(mask)  # the rule written out: (quantile, distance, index) order
        full = idx[np.lexsort((distances[idx], q[idx]))][:k]
        np.testing.assert_array_equal(fast["nearest_kept"], full)


def _summary_written_out(d, labels, mask, c):
    """band_summary's counts and edges, each rule written out over (N,) masks."""
    rank = class_ranks(d, labels, c)[0]
    counts = np.bincount(labels, minlength=c)
    rows = []
    for k in range(c):
        mine, kept_k = labels == k, (labels == k) & mask
        if kept_k.any():
            first, last = rank[kept_k].min(), rank[kept_k].max()
        else:  # a class that keeps nothing: its nearer half counts as near
            first, last = counts[k] // 2, counts[k] // 2 - 1
        dropped = mine & ~mask
        rows.append([counts[k], kept_k.sum(), (dropped & (rank < first)).sum(),
                     (dropped & (rank > last)).sum(),
                     d[kept_k].min() if kept_k.any() else np.nan,
                     d[kept_k].max() if kept_k.any() else np.nan])
    return np.array(rows, dtype=np.float64).reshape(c, 6)


def _edges_written_out(d, labels, mask, k, c):
    """edge_samples as its docstring says: each kind's samples in (quantile, distance, index)
    order (reversed for the far ones), the first k."""
    rank, counts = class_ranks(d, labels, c)[:2]
    q = (rank + 0.5) / np.maximum(counts[labels], 1)
    first = np.full(c, np.iinfo(np.int64).max)
    last = np.full(c, -1)
    for j in range(c):
        kept_j = (labels == j) & mask
        if kept_j.any():
            first[j], last[j] = rank[kept_j].min(), rank[kept_j].max()
        else:
            first[j], last[j] = counts[j] // 2, counts[j] // 2 - 1
    near = ~mask & (rank < first[labels])
    far = ~mask & (rank > last[labels])

    def first_k(which, ascending):
        idx = np.flatnonzero(which)
        s = 1.0 if ascending else -1.0
        return idx[np.lexsort((s * d[idx], s * q[idx]))][:k].tolist()

    return {"nearest_kept": first_k(mask, True), "farthest_kept": first_k(mask, False),
            "nearest_dropped": first_k(near, True), "farthest_dropped": first_k(far, False)}


def test_summary_and_edges_from_the_class_order_match_the_rules_written_out():
    """band_summary and edge_samples read the kept samples' span in the class-sorted order
    (no (N,) pass per count, at most k candidates per class): the same counts, edges and
    galleries as the rules over (N,) masks, for masks with holes, empty classes, classes that
    keep nothing or everything, and many ties."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        c = int(rng.integers(1, 7))
        n = int(rng.integers(1, 300))
        labels = rng.integers(0, c, n)
        d = np.round(rng.random(n), 1 + trial % 2).astype(np.float32)  # ties
        mask = [rng.random(n) < rng.random(), np.zeros(n, bool), np.ones(n, bool),
                band_mask(d, labels, BandConfig(low=0.2, high=0.7), c)][trial % 4]
        ranks = class_ranks(d, labels, c)
        names = [f"c{i}" for i in range(c)]
        s = band_summary(d, labels, mask, names, ranks=ranks)
        assert s["dropped_inside"].tolist() == (
            s["total"] - s["kept"] - s["dropped_near"] - s["dropped_far"]).tolist()
        got = s[["total", "kept", "dropped_near", "dropped_far", "low_distance",
                 "high_distance"]].to_numpy(np.float64)
        np.testing.assert_array_equal(got, _summary_written_out(d, labels, mask, c))
        for k in (0, 1, 3, 50):
            want = _edges_written_out(d, labels, mask, k, c)
            for r in (ranks, None):
                fast = edge_samples(d, labels, mask, k, ranks=r)
                assert {key: v.tolist() for key, v in fast.items()} == want, (trial, k)
                assert all(v.dtype == np.int64 for v in fast.values())
