"""Generative metrics on constructed data: k-NN, PRDC, memorisation, duplicates, Fréchet
distance, conditioning fidelity, the per-class dashboard."""

from __future__ import annotations

import numpy as np
import pytest

from engine.curation import generative_metrics
from engine.curation.generative_metrics import conditioning_fidelity, frechet_distance
from engine.errors import InvalidConfigError


def _blobs(n=200, d=8, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) + shift).astype(np.float32)


def test_faiss_nearest_equals_sklearn():
    from sklearn.neighbors import NearestNeighbors

    base, query = _blobs(300, 16, 0), _blobs(50, 16, 1)
    d, idx = generative_metrics.nearest(query, base, 4)
    ref_d, ref_idx = NearestNeighbors(n_neighbors=4, algorithm="brute").fit(base).kneighbors(query)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-4)
    # self-excluded radii equal sklearn's kneighbors() without a query (which skips self)
    r = generative_metrics.knn_radii(base, 3)
    ref = NearestNeighbors(n_neighbors=3, algorithm="brute").fit(base).kneighbors()[0][:, -1]
    np.testing.assert_allclose(r, ref, rtol=1e-4, atol=1e-4)


def _prdc_bruteforce(real, fake, k):
    """Reference: full distance matrices, the definitions written out."""
    from scipy.spatial.distance import cdist

    rr, ff, fr = cdist(real, real), cdist(fake, fake), cdist(fake, real)
    r_rad = np.sort(rr, axis=1)[:, k]
    f_rad = np.sort(ff, axis=1)[:, k]
    inside = fr <= r_rad[None, :]
    return {"precision": inside.any(axis=1).mean(),
            "recall": (fr <= f_rad[:, None]).any(axis=0).mean(),
            "density": inside.sum() / (k * len(fake)),
            "coverage": (fr.min(axis=0) <= r_rad).mean()}


def test_prdc_identical_disjoint_and_bruteforce(monkeypatch):
    real = _blobs(150, 6, 0)
    same = generative_metrics.prdc(real, real.copy(), k=3)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    far = generative_metrics.prdc(real, _blobs(150, 6, 1, shift=100.0), k=3)
    assert far["precision"] == far["recall"] == far["coverage"] == far["density"] == 0.0
    # a half-overlapping set, computed in small chunks, equals the written-out definitions
    fake = np.concatenate([_blobs(60, 6, 2), _blobs(60, 6, 3, shift=4.0)])
    monkeypatch.setattr(generative_metrics, "CHUNK_ELEMENTS", 1000)
    got = generative_metrics.prdc(real, fake, k=3)
    ref = _prdc_bruteforce(real.astype(np.float64), fake.astype(np.float64), 3)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-9), key
    assert 0.3 < got["precision"] < 0.8 and got["n_fake"] == 120


def test_prdc_subsamples_and_rejects_tiny_sets():
    real = _blobs(500, 4, 0)
    out = generative_metrics.prdc(real, _blobs(400, 4, 1), k=3, max_samples=100)
    assert out["n_real"] == out["n_fake"] == 100
    with pytest.raises(InvalidConfigError):
        generative_metrics.prdc(real[:3], real[:3], k=3)


def test_memorisation_flags_a_copy_and_duplicates():
    real = _blobs(100, 8, 0)
    fake = _blobs(20, 8, 1)
    fake[5] = real[42] + 1e-4  # a near-copy of a training image
    fake[7] = fake[3]  # a duplicate pair among the generated samples
    mem = generative_metrics.memorisation(fake, real, copy_factor=0.5)
    assert mem["copy"].tolist() == [i == 5 for i in range(20)]
    assert mem.loc[5, "nearest_real"] == 42 and mem.loc[5, "ratio"] < 0.01
    thr, ref = generative_metrics.copy_threshold(real, 0.5)
    dup = generative_metrics.near_duplicates(fake, thr)
    assert dup[["a", "b"]].values.tolist() == [[3, 7]] and dup["distance"].iloc[0] < 1e-6


def test_subsample_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [100, 50, 10])
    idx = generative_metrics.subsample(160, 80, seed=3, labels=labels)
    assert np.bincount(labels[idx]).tolist() == [50, 25, 5]
    np.testing.assert_array_equal(idx, generative_metrics.subsample(160, 80, seed=3, labels=labels))
    assert len(generative_metrics.subsample(10, 80)) == 10


def test_dashboard_and_evaluate():
    rng = np.random.default_rng(0)
    real_labels = np.repeat([0, 1], 60)
    real = (rng.normal(size=(120, 6)) + real_labels[:, None] * 3).astype(np.float32)
    fake_labels = np.repeat([0, 1], 40)
    fake = (rng.normal(size=(80, 6)) * np.where(fake_labels == 1, 0.1, 1.0)[:, None]
            + fake_labels[:, None] * 3).astype(np.float32)
    mask = np.ones(80, bool)
    mask[:10] = False
    fid = np.linspace(0, 1, 80)
    table = generative_metrics.class_dashboard(fake, fake_labels, mask, real, real_labels, ["a", "b"],
                               fidelity=fid, metric="euclidean")
    assert table["acceptance"].tolist() == [0.75, 1.0]
    # class b was generated with a tenth of the spread: far less diverse than its real images
    assert table.loc[1, "diversity"] < 0.2 * table.loc[1, "real_diversity"]
    assert table.loc[0, "diversity"] == pytest.approx(table.loc[0, "real_diversity"], rel=0.3)
    np.testing.assert_allclose(table["fidelity"], [fid[:40].mean(), fid[40:].mean()])
    out = generative_metrics.evaluate(real, real_labels, fake, fake_labels, mask, ["a", "b"], fidelity=fid,
                      metric="euclidean", k=3)
    assert out["overall"]["kept"] == 70 and 0 <= out["overall"]["precision"] <= 1
    assert list(out["per_class"].columns[-2:]) == ["frechet", "copies"]
    assert out["per_class"]["frechet"].notna().all()


def _random(n=600, d=12, c=5, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    emb = (rng.normal(size=(n, d)) + labels[:, None] * 0.5).astype(np.float32)
    return emb, labels


def test_frechet_distance_pinned_and_identical():
    a = np.array([0.0, 1.0, 2.0, 3.0])
    b = 2 * a + 1  # mean 4 vs 1.5; std doubles -> (2.5)^2 + (s - 2s)^2 with s^2 = 5/3
    assert frechet_distance(a, b) == pytest.approx(95 / 12, rel=1e-9)
    emb, _ = _random(n=300, d=8)
    assert frechet_distance(emb, emb) == pytest.approx(0.0, abs=1e-6)
    # diagonal Gaussians: ||dmu||^2 + sum (s1 - s2)^2
    x = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [2.0, 4.0]])
    y = x * np.array([1.0, 0.5]) + 3.0
    s1 = np.sqrt(np.var(x, axis=0, ddof=1))
    s2 = np.sqrt(np.var(y, axis=0, ddof=1))
    expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-7)
    with pytest.raises(InvalidConfigError):
        frechet_distance(a[:1], b)


def test_conditioning_fidelity():
    s = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    g = np.array([[2, 0], [0, -3], [1, 0], [1, 1]], dtype=np.float32)
    np.testing.assert_allclose(conditioning_fidelity(s, g), [1, -1, 2 ** -0.5, 0], atol=1e-6)
    with pytest.raises(InvalidConfigError):
        conditioning_fidelity(s, g[:3])
