"""engine.curation.knn and engine.curation.hand: arrays in, arrays out, checked against brute
force (exact answers, so they hold on any CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.curation import apply_hand, hand_counts, hand_state, knn
from engine.errors import InvalidConfigError


@pytest.fixture
def clustered():
    """600 x 24 float32 in 6 clusters, and 9 queries (some of them indexed rows)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((6, 24)) * 4
    x = (centres[rng.integers(0, 6, 600)] + rng.standard_normal((600, 24))).astype(np.float32)
    q = np.concatenate([x[[0, 17, 599]], rng.standard_normal((6, 24)).astype(np.float32) * 3])
    return x, q


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_flat_index_is_exact(clustered, metric):
    x, q = clustered
    index = knn.build_index(x, metric)
    d, ids = knn.search(index, q, 10, metric)
    bd, bi = knn.brute_force(x, q, 10, metric, chunk=128)  # chunks: the merge is exercised
    assert (ids == bi).all()
    np.testing.assert_allclose(d, bd, atol=1e-4)
    assert (np.diff(d, axis=1) >= -1e-6).all()  # ascending
    assert ids[0, 0] == 0 and d[0, 0] == pytest.approx(0.0, abs=1e-4)  # an indexed row: itself
    if metric == "euclidean":  # pinned against the definition
        np.testing.assert_allclose(d[3, 0], np.linalg.norm(x[ids[3, 0]] - q[3]), rtol=1e-4)
    else:
        cos = x[ids[3, 0]] @ q[3] / np.linalg.norm(x[ids[3, 0]]) / np.linalg.norm(q[3])
        assert d[3, 0] == pytest.approx(1 - cos, abs=1e-5)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_ivf_index_probing_every_cell_is_exact_and_recall_grows(clustered, metric):
    x, q = clustered
    index = knn.build_index(x, metric, exact_max=100, nlist=12, nprobe=2, seed=1)
    assert type(index).__name__ == "IndexIVFFlat" and index.nprobe == 2
    bd, bi = knn.brute_force(x, q, 10, metric)
    d, ids = knn.search(index, q, 10, metric, nprobe=12)  # every cell: exact again
    assert (ids == bi).all()
    np.testing.assert_allclose(d, bd, atol=1e-4)
    _, few = knn.search(index, q, 10, metric, nprobe=1)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(few, bi)])
    assert 0 < recall <= 1.0


def test_rows_save_load_and_errors(clustered, tmp_path):
    x, q = clustered
    rows = np.arange(0, 600, 3)
    index = knn.build_index(x, "cosine", rows=rows)
    assert index.ntotal == 200
    _, ids = knn.search(index, q, 5, "cosine")
    _, bi = knn.brute_force(x[rows], q, 5, "cosine")
    assert (ids == bi).all()  # ids are positions in rows
    path = knn.save_index(index, tmp_path / "i" / "a.faiss")
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    again = knn.load_index(path)
    assert (knn.search(again, q, 5, "cosine")[1] == ids).all()
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(InvalidConfigError, match="not a readable faiss index"):
        knn.load_index(tmp_path / "bad.faiss")
    with pytest.raises(InvalidConfigError, match="k must be in"):
        knn.search(index, q, 201, "cosine")
    with pytest.raises(InvalidConfigError, match="different encodings"):
        knn.search(index, q[:, :5], 3, "cosine")
    with pytest.raises(InvalidConfigError, match="metric"):
        knn.build_index(x, "manhattan")


def test_hand_state_replays_decisions_and_applies_on_top_of_a_band():
    state = hand_state(6, [("drop", np.array([0, 1])), ("keep", np.array([1, 4])),
                           ("clear", np.array([4]))])
    assert state.tolist() == [-1, 1, 0, 0, 0, 0]  # latest decision wins; clear: the band
    band = np.array([True, False, True, False, True, False])
    assert apply_hand(band, state).tolist() == [False, True, True, False, True, False]
    counts = hand_counts(np.array([0, 0, 1, 1, 1, 1]), band, state, ["a", "b"])
    assert counts.columns.tolist() == ["class", "generated", "kept by band", "+ kept by hand",
                                       "- dropped by hand", "kept"]
    assert counts.iloc[-1].tolist() == ["all", 6, 3, 1, 1, 3]
    assert counts.iloc[0].tolist() == ["a", 2, 1, 1, 1, 1]
    with pytest.raises(InvalidConfigError, match="outside 0..5"):
        hand_state(6, [("keep", np.array([6]))])
    with pytest.raises(InvalidConfigError, match="decision"):
        hand_state(6, [("maybe", np.array([1]))])


def test_hand_counts_over_the_decided_samples_match_the_kept_mask():
    """hand_counts counts the hand's columns over the decided samples only: the same table as
    counting the whole kept mask (``apply_hand``), decisions inside and outside the band."""
    rng = np.random.default_rng(5)
    for trial in range(20):
        n, c = int(rng.integers(1, 400)), int(rng.integers(1, 6))
        labels = rng.integers(0, c, n)
        band = rng.random(n) < 0.5
        state = rng.choice(np.array([-1, 0, 0, 0, 1], np.int8), n)
        kept = apply_hand(band, state)
        counts = hand_counts(labels, band, state, [f"c{i}" for i in range(c)])
        for col, m in (("generated", np.ones(n, bool)), ("kept by band", band),
                       ("+ kept by hand", kept & ~band), ("- dropped by hand", band & ~kept),
                       ("kept", kept)):
            want = np.bincount(labels[m], minlength=c)
            assert counts[col].tolist() == [*want.tolist(), int(m.sum())], (trial, col)
