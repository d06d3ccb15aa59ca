"""Curation: centroids, distances, bands, figures, metrics, selections (pure numpy, fast)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import BandConfig
from engine.curate import (band_edges, band_figure, band_mask, band_summary, band_thresholds,
                           centroid_distances, class_centroids, combine, conditioning_fidelity,
                           edge_samples, frechet_distance)
from engine.errors import InvalidConfigError
from engine.progress import CancelToken, ProgressEvent
from engine.errors import Cancelled


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


# ---------------------------------------------------------------------------- metrics


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


# ---------------------------------------------------------------------------- selections


def test_combine():
    a = np.array([5, 1, 3, 3])
    b = np.array([3, 4, 9])
    np.testing.assert_array_equal(combine(a, b, "union"), [1, 3, 4, 5, 9])
    np.testing.assert_array_equal(combine(a, b, "intersection"), [3])
    np.testing.assert_array_equal(combine(a, b, "difference"), [1, 5])
    assert combine(a, b, "union").dtype == np.int64
    assert combine([], [], "union").dtype == np.int64
    with pytest.raises(InvalidConfigError, match="op must be"):
        combine(a, b, "xor")


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


def test_embedding_map_stratified_and_figure():
    from engine.curate import embedding_map, map_figure

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
    mask = np.zeros(len(syn), bool)
    mask[::2] = True
    fig = map_figure(pts, mask, [f"c{i}" for i in range(5)])
    names = {t.name.split(" · ")[1] for t in fig.data}
    assert names == {"real", "kept", "dropped"}
    kept_pts = sum(len(t.x) for t in fig.data if t.name.endswith("kept"))
    assert kept_pts == int(mask[pts.loc[pts.kind == "synthetic", "index"]].sum())
    tsne = embedding_map(real, rl, syn, sl, method="tsne", max_points=60, seed=0)
    assert len(tsne) <= 60 and np.isfinite(tsne[["x", "y"]].to_numpy()).all()


# ---------------------------------------------------------------------------- stage level


@pytest.fixture
def curated_project(tmp_path, one_thread):
    """A real project: tiny dataset encoded twice (pca 8-d and pca 4-d), and a constructed
    "generation" (2 noisy variations of every training image, sample 0 an exact copy of its
    source) re-encoded by both encoders. No RCDM training: the curation stage only needs rows,
    PNGs and embeddings."""
    import pandas as pd
    from PIL import Image as PILImage

    from conftest import write_tiny_folder
    from engine import data
    from engine.config import EncodeConfig, ImportConfig
    from engine.jobs import JobManager
    from engine.project import Generation, Model, Project
    from engine.stages import encode_stage

    project = Project(tmp_path / "proj")
    jobs = JobManager(project)
    ds = data.import_image_folder(project, write_tiny_folder(tmp_path / "tiny", per_class=8),
                                  "tiny", ImportConfig(test_fraction=0.25))
    enc8 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(dim=8, image_size=12),
                                          dataset_ref=ds.id)).result_id
    enc4 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(dim=4, image_size=12),
                                          dataset_ref=ds.id)).result_id
    project.add(Model(id="mdl-test", name="test-model", dataset_id=ds.id, encoding_id=enc8,
                      encoder="pca", status="trained"))
    images = project.images(ds.id, split="train")
    folder = project.new_folder("generations", "gen-test")
    rng = np.random.default_rng(0)
    rows = []
    for j, img in enumerate(images.itertuples()):
        pixels = np.asarray(PILImage.open(project.abs(img.path)).convert("RGB"), dtype=np.int16)
        for v in range(2):
            noisy = pixels if (j, v) == (0, 0) else pixels + rng.integers(-40, 40, pixels.shape)
            path = folder / f"{j:04d}_{v}.png"
            PILImage.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
            i = len(rows)
            rows.append({"id": f"gen-test_{i:07d}", "generation_id": "gen-test", "idx": i,
                         "path": project.rel(path), "source_image_id": img.id,
                         "label": img.label, "class_name": img.class_name, "seed": 100 + i,
                         "sampler": "ddim", "steps": 5, "guidance": 1.0})
    project.add_generation(Generation(id="gen-test", name="gen", model_id="mdl-test",
                                      dataset_id=ds.id, encoder="pca",
                                      folder=project.rel(folder), count=len(rows),
                                      config_json='{"variations": 2}'), pd.DataFrame(rows))
    re8 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                         generation_ref="gen-test", encoding_ref=enc8)).result_id
    re4 = jobs.run_inline(encode_stage.prepare(project, EncodeConfig(encoder="pca"),
                                         generation_ref="gen-test", encoding_ref=enc4)).result_id
    yield project, re8, re4
    project.close()


def test_stage_band_second_encoder_metrics_provenance_export(curated_project, tmp_path):
    from engine.config import ExportConfig
    from engine.jobs import JobManager
    from engine.stages import curate_stage
    from engine.stages import export_stage

    project, re8, re4 = curated_project
    assert [v for _, v in curate_stage.encoding_choices(project, "gen")] == [re8, re4]
    bd8 = curate_stage.band_data(project, "gen", re8)
    bd4 = curate_stage.band_data(project, "gen", re4)  # judged by the second encoder
    assert project.embeddings(bd4.encoding).shape[1] == 4
    assert project.embeddings(bd4.real_encoding).shape[1] == 4  # real side: same encoder
    assert len(bd8.distances) == len(bd4.distances) == 36
    assert not np.allclose(bd8.distances, bd4.distances)
    band = BandConfig(low=0.0, high=1.0, outlier="zscore", target_per_class=5)
    mask = curate_stage.band_mask(bd4, band)
    assert np.bincount(bd4.labels[mask]).tolist() == [5, 5, 5]

    m = curate_stage.metrics(project, bd8, np.ones(36, bool), k=3)
    assert m["overall"]["copies"] >= 1 and 0 in m["copies"]["sample"].tolist()
    assert 0.0 <= m["overall"]["precision"] <= 1.0 and len(m["per_class"]) == 3
    fid = curate_stage.fidelity(project, bd8)
    assert fid[0] == pytest.approx(1.0, abs=1e-5) and fid.shape == (36,)

    pts = curate_stage.embedding_map(project, bd4, max_points=30)
    assert curate_stage.embedding_map(project, bd4, max_points=30) is pts  # cached on the view
    assert (pts["kind"] == "real").any() and (pts["kind"] == "synthetic").any()

    info = curate_stage.provenance(project, bd8, 3)
    assert info["seed"] == 103 and info["model"] == "test-model" and info["sampler"] == "ddim"
    assert info["source_path"] and 0 < info["class_quantile"] < 1

    sel = curate_stage.save_selection(project, bd4, band, name="z5")
    spec = export_stage.prepare(project, ExportConfig(val_fraction=0.2), sel.id,
                                tmp_path / "out")
    JobManager(project).run_inline(spec)
    import pandas as pd

    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 15 and set(manifest["split"]) == {"train", "val"}
    assert manifest["judged_by"].eq("pca").all() and manifest["band"].str.contains(
        "target 5/class").all()
    assert manifest["selection_id"].eq(sel.id).all() and manifest["distance"].notna().all()


def test_cli_curate_options_metrics_and_export_split(curated_project, tmp_path, capsys):
    import json

    from studio.cli import main

    project, re8, re4 = curated_project
    path = str(project.path)
    project.close()
    assert main(["curate", "--project", path, "--generation", "gen", "--mode", "distance",
                 "--low", "0", "--high", "2", "--class-band", "class_1=0:0.05",
                 "--target", "4", "--encoding", re4, "--metrics", "--name", "cli",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["encoder"] == "pca" and out["band"]["per_class"] == [["class_1", 0.0, 0.05]]
    assert out["count"] <= 12 and {"precision", "recall", "density", "coverage", "frechet",
                                   "copies"} <= set(out["metrics"])
    assert main(["export", "--project", path, "--selection", "cli", "--out",
                 str(tmp_path / "exp"), "--val-fraction", "0.5", "--json"]) == 0
    assert (tmp_path / "exp" / "val" / "metadata.csv").is_file()


def test_studio_curate_view_functions(curated_project):
    """The curate tab's functions on a real StudioContext (no server): band options, a second
    encoder, provenance, map, metrics, save and combine."""
    from engine.stages import curate_stage
    from studio.context import StudioContext
    from studio.tabs import curate_tab

    project, re8, re4 = curated_project
    path = project.path
    project.close()
    ctx = StudioContext(path)
    try:
        v = curate_tab.band_view(ctx, "gen-test", 0.25, 0.75, "real", "cosine")
        assert v["kept"] == 18 and "judged by pca" in v["text"]
        v4 = curate_tab.band_view(ctx, "gen-test", 0.0, 1.0, "real", "cosine", re4, target=3,
                           per_class="class_0=0:0.5", outlier="zscore")
        assert v4["bd"].encoding.id == re4 and v4["counts"]["kept"].tolist()[1:] == [3, 3]
        assert "drop other" in v4["counts"].columns and "target 3/class" in v4["text"]
        # an encoding of another generation falls back to this generation's latest
        assert curate_tab.band_view(ctx, "gen-test", 0.2, 0.8, "real", "cosine",
                             "enc-nope")["bd"].encoding.id == re4
        with pytest.raises(InvalidConfigError):
            curate_tab.make_band(0.1, 0.9, "real", "cosine", per_class="class_0 0.1")
        i = int(v["edge_idx"]["farthest_kept"][0])
        info = curate_stage.provenance(ctx.project, v["bd"], i)
        assert "seed" in curate_tab.provenance_md(info) and info["path"].endswith(".png")
        overall, per_class, fig, text = curate_tab.metrics_view(ctx, v)
        assert {"precision", "recall", "density", "coverage", "frechet"} <= set(overall["metric"])
        assert len(per_class) == 3 and fig.data and "kept samples" in text
        a = curate_tab.save(ctx, "gen-test", 0.0, 0.5, "real", "cosine", "near")
        b = curate_tab.save(ctx, "gen-test", 0.25, 0.75, "real", "cosine", "mid")
        both = curate_stage.combine(ctx.project, a.id, b.id, "intersection", "both")
        assert both.count == 9  # ranks 0..5 and 3..8 of 12 per class share 3..5
        assert "quantile 0-0.5" in curate_tab.selections_table(ctx)["how"].tolist()
    finally:
        ctx.close()
